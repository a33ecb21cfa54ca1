"""Container images without Docker or a registry: a Debian root filesystem, a venv from a lock file, the package.

    python -m torghut_localstack.imagebuild operator        # localhost/torghut-rollout-operator:<version>-<inputs>
    python -m torghut_localstack.imagebuild simulator       # localhost/torghut-sim:<version>-<inputs>
    python -m torghut_localstack.imagebuild operator --force   # build again; must give the same digest

An image is three layers, built the way ``operator/Dockerfile`` builds it:

1. **base**: ``mmdebstrap --variant=minbase`` of Debian bookworm (main, -updates, -security) with ``python3``
   and the non-root user 10001 (``groupadd``/``useradd`` as in the Dockerfile);
2. **deps**: ``/opt/venv``, made by Debian's ``python3 -m venv`` in a second Debian tree that also has
   ``python3-venv`` (the Dockerfile's builder stage), filled with ``pip install --no-deps`` of the lock file from
   wheels downloaded on the host, then compiled with ``compileall --invalidation-mode checked-hash``;
3. **app**: what ``pip install --no-deps`` of the project's wheel (built on the host from exactly the files the
   Dockerfile copies) adds to that venv, plus the recipe's plain files (the simulator's Alembic chain in ``/app``).

Every layer is a tar written here: entries sorted, numeric owners without names, mtimes clamped to
:data:`SOURCE_DATE_EPOCH`, no device nodes, gzip without name or time. The config's dates are that epoch too.
The result is an OCI layout (``oci/``) and a docker archive (``skopeo copy``, ``localhost/NAME:TAG``), in
``<cache>/images/NAME/<inputs>/``, where ``<inputs>`` is the hash of everything that goes in: the lock file, the
package sources, the recipe, the Debian trees' own keys and this file. A second build with the same inputs is a
cache hit; ``--force`` builds the layers above the base again and must give the same digest (tested).

The Debian trees are cached by their inputs (suite, sources, package list, the mmdebstrap command), not by the
archive's state: Debian's mirrors move (point releases, security updates), so a tree rebuilt later may hold newer
package versions. Rebuilt from the same archive state, it is the same file for file (mmdebstrap honours
SOURCE_DATE_EPOCH); ``--refresh-base`` rebuilds them on purpose, and each tree's ``packages.txt`` records what it
holds. Importing this module starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

__all__ = [
    "BUILDER_PACKAGES",
    "OPERATOR",
    "PYTHON_VERSION",
    "RECIPES",
    "RUNTIME_PACKAGES",
    "SIMULATOR",
    "SOURCE_DATE_EPOCH",
    "USER_ID",
    "BuiltImage",
    "ImageBuildError",
    "ImageRecipe",
    "build_image",
    "cache_root",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]

SOURCE_DATE_EPOCH: Final = 1735689600
"""2025-01-01T00:00:00Z: every mtime is clamped to it, and it is the image's creation date."""

SUITE: Final = "bookworm"
DEBIAN_SOURCES: Final[tuple[str, ...]] = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
"""What ``debian:bookworm-slim`` (the Dockerfile's base) lists in its sources."""

RUNTIME_PACKAGES: Final[tuple[str, ...]] = ("python3",)
"""The runtime stage's packages, on top of minbase (the Dockerfile installs the same)."""
BUILDER_PACKAGES: Final[tuple[str, ...]] = ("python3", "python3-venv")
"""The builder stage's packages: ``python3 -m venv`` needs Debian's ensurepip."""

PYTHON_VERSION: Final = "3.11.2"
"""Debian bookworm's Python; the build fails when the tree's ``python3`` says otherwise."""

USER_ID: Final = 10001
VENV: Final = "/opt/venv"
PLATFORM_TAGS: Final[tuple[str, ...]] = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)),  # bookworm's glibc is 2.36
)
BUILD_BACKEND: Final = "setuptools==80.9.0"
"""The project wheel's build backend, pinned so the wheel's metadata does not move with setuptools releases."""

_USER_HOOK: Final = (
    f'chroot "$1" groupadd --system --gid {USER_ID} torghut && '
    f'chroot "$1" useradd --system --uid {USER_ID} --gid {USER_ID} --no-create-home --home-dir /nonexistent '
    "--shell /usr/sbin/nologin torghut"
)
_PATH: Final = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the step and ends with its output."""


@dataclass(frozen=True)
class ImageRecipe:
    """What goes into one image besides the Debian base (see the module docstring)."""

    name: str
    lock: str
    """Repository path of the lock file installed with ``--no-deps``."""
    sources: tuple[str, ...]
    """Repository paths the project wheel is built from (what the Dockerfile copies)."""
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    """(repository path, absolute image path) copied as they are, symlinks followed."""
    workdir: str = "/tmp"  # noqa: S108 - the image's working directory (the Dockerfile's WORKDIR), not a host path
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    smoke: tuple[str, ...] = ()
    """Run in the builder after the install: the build fails unless it exits 0."""

    def config_env(self) -> list[str]:
        return [f"PATH={_PATH}", *(f"{key}={value}" for key, value in self.env)]


_LABELS: Final = (
    ("org.opencontainers.image.source", "https://github.com/proompteng/torghut-rollout-operator"),
    ("org.opencontainers.image.licenses", "Apache-2.0"),
)

OPERATOR: Final = ImageRecipe(
    name="torghut-rollout-operator",
    lock="requirements.runtime.lock",
    sources=("pyproject.toml", "README.md", "operator/torghut_operator"),
    entrypoint=("torghut-operator", "run", "--liveness", "http://0.0.0.0:8080/healthz"),
    env=(("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"), ("TORGHUT_OPERATOR_METRICS_PORT", "9090")),
    ports=(8080, 9090),
    labels=(
        ("org.opencontainers.image.title", "torghut-rollout-operator"),
        (
            "org.opencontainers.image.description",
            "Kubernetes operator rolling Torghut out through migrate, deploy and verify, gated on evidence.",
        ),
        *_LABELS,
    ),
    smoke=("torghut-operator", "run", "--help"),
)
"""The operator, as ``operator/Dockerfile`` describes it (``tests/integration/test_images.py`` compares them)."""

SIMULATOR: Final = ImageRecipe(
    name="torghut-sim",
    lock="requirements.sim.lock",
    sources=("pyproject.toml", "README.md", "operator/torghut_operator", "cluster/torghut_localstack"),
    files=(
        ("cluster/torghut_localstack/torghut_migrations/alembic.ini", "/app/alembic.ini"),
        ("cluster/torghut_localstack/torghut_migrations/migrations", "/app/migrations"),
        ("manifests/torghut", "/app/route_grant_sql"),
    ),
    entrypoint=("python", "-m", "torghut_localstack.simulator"),
    cmd=("--host", "0.0.0.0", "--port", "8181"),  # noqa: S104 - a pod's port, reached through its Service
    workdir="/app",
    env=(("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1")),
    ports=(8181,),
    labels=(("org.opencontainers.image.title", "torghut-sim"), *_LABELS),
    smoke=("alembic", "-c", "/app/alembic.ini", "heads"),
)
"""The Torghut simulator and the Alembic chain its migration Job runs (``alembic -c /app/alembic.ini upgrade
heads``)."""

RECIPES: Final[Mapping[str, ImageRecipe]] = {"operator": OPERATOR, "simulator": SIMULATOR}


@dataclass(frozen=True)
class Layer:
    digest: str
    """sha256 of the gzip blob."""
    diff_id: str
    """sha256 of the uncompressed tar."""
    size: int
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "diff_id": self.diff_id, "size": self.size, "description": self.description}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layer:
        return cls(str(data["digest"]), str(data["diff_id"]), int(data["size"]), str(data["description"]))


@dataclass(frozen=True)
class BuiltImage:
    """One image in the cache. ``digest`` is the OCI manifest's (the image's identity)."""

    name: str
    tag: str
    key: str
    digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    directory: Path
    cache_hit: bool = False
    seconds: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"localhost/{self.name}:{self.tag}"

    @property
    def oci_layout(self) -> Path:
        return self.directory / "oci"

    @property
    def docker_archive(self) -> Path:
        return self.directory / f"{self.name}.docker.tar"

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tag": self.tag,
            "ref": self.ref,
            "key": self.key,
            "digest": self.digest,
            "config_digest": self.config_digest,
            "layers": [layer.to_json() for layer in self.layers],
            "timings": dict(self.timings),
        }


# --- the cache -----------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$TORGHUT_CLUSTER_CACHE/images`` (default ``~/.cache/torghut-rollout-operator/images``), as
    ``cluster/build-binaries.sh`` chooses its cache."""
    base = os.environ.get("TORGHUT_CLUSTER_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "torghut-rollout-operator")
    return Path(base) / "images"


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """One build at a time per cache (two test sessions may build the same image)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _publish(final: Path) -> Iterator[Path]:
    """A scratch directory beside ``final`` that becomes ``final`` only if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    scratch.chmod(0o755)
    try:
        yield scratch
        if final.exists():
            _remove_tree(final)
        scratch.rename(final)
    finally:
        if scratch.exists():
            _remove_tree(scratch)


def _remove_tree(path: Path) -> None:
    _unmount_under(path)
    shutil.rmtree(path)


def _unmount_under(path: Path) -> None:
    """Unmount whatever is still mounted under ``path`` (mmdebstrap's root mode has left ``/proc`` mounted)."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=True, capture_output=True, timeout=30)


def _digest_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tree_digest(paths: Iterable[Path], relative_to: Path) -> str:
    """sha256 over the (path, mode, content) of every file under ``paths``; caches and build debris ignored."""
    digest = hashlib.sha256()
    for path in sorted(_files_under(paths), key=lambda p: p.relative_to(relative_to).as_posix()):
        digest.update(path.relative_to(relative_to).as_posix().encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _files_under(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for directory, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
            for name in sorted(files):
                if not name.endswith((".pyc", ".pyo")):
                    yield Path(directory) / name


# --- running commands ----------------------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, what: str, timeout: float = 1800.0, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {argv[0]} is not installed (apt-get install mmdebstrap umoci skopeo)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{what}: no result after {timeout:.0f}s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-40:]
        raise ImageBuildError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n" + "\n".join(output))
    return done.stdout


def _chroot(root: Path, argv: Sequence[str], *, what: str) -> str:
    env = {
        "PATH": _PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    return _run(["chroot", str(root), *argv], what=what, env=env)


def _tool_version(argv: Sequence[str]) -> str:
    return _run(argv, what=f"{argv[0]} version").strip()


# --- Debian trees --------------------------------------------------------------------------------------------------


DPKG_FILTERS: Final[tuple[str, ...]] = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/man/*",
)
"""What ``debian:bookworm-slim`` leaves out (documentation, manuals, translations), kept for later dpkg runs too."""


def _mmdebstrap_argv(packages: Sequence[str], hooks: Sequence[str], target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        # merged /usr by mmdebstrap's own hook, as debian:bookworm-slim has it: the usrmerge package (and perl) stay out
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt={rule}" for rule in DPKG_FILTERS),
        f"--include={','.join(packages)}",
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        str(target),
        *DEBIAN_SOURCES,
    ]


def _debian_key(packages: Sequence[str], hooks: Sequence[str]) -> str:
    argv = _mmdebstrap_argv(packages, hooks, Path("TARGET"))
    return _digest_of("debian-tree", argv, SOURCE_DATE_EPOCH, _tool_version(["mmdebstrap", "--version"]))[:16]


def _debian_tree(packages: Sequence[str], hooks: Sequence[str], *, refresh: bool, log: Callable[[str], None]) -> Path:
    """A Debian tree in ``<cache>/debian/<key>/rootfs``, built by mmdebstrap unless cached (see module docstring)."""
    key = _debian_key(packages, hooks)
    final = cache_root() / "debian" / key
    if (final / "packages.txt").is_file() and not refresh:
        return final / "rootfs"
    log(f"debian {SUITE} minbase + {', '.join(packages)}: mmdebstrap ...")
    started = time.monotonic()
    with _publish(final) as scratch:
        rootfs = scratch / "rootfs"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        try:
            _run(_mmdebstrap_argv(packages, hooks, rootfs), what="mmdebstrap", env=env)
        finally:
            _unmount_under(scratch)
        version = _chroot(
            rootfs, ["python3", "-c", "import platform; print(platform.python_version())"], what="python3"
        )
        if version.strip() != PYTHON_VERSION:
            raise ImageBuildError(f"Debian's python3 is {version.strip()}, the recipe expects {PYTHON_VERSION}")
        listing = _chroot(rootfs, ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"], what="dpkg-query")
        (scratch / "packages.txt").write_text("".join(sorted(listing.splitlines(keepends=True))))
    log(f"debian tree {key}: {time.monotonic() - started:.1f}s")
    return final / "rootfs"


# --- layers --------------------------------------------------------------------------------------------------------


class _HashingWriter:
    """The uncompressed tar stream: hashed (the diff_id) on its way into gzip."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.sink.write(data)


def _layer_entries(root: Path, subtrees: Sequence[str] = ("",)) -> list[str]:
    """Every path under ``root`` (or under its ``subtrees``, with their parents) as relative POSIX paths."""
    entries: set[str] = set()
    for subtree in subtrees:
        start = root / subtree
        parts = Path(subtree).parts
        entries.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for directory, dirs, files in os.walk(start):
            rel = Path(directory).relative_to(root).as_posix()
            for name in [*dirs, *files]:
                entries.add(name if rel == "." else f"{rel}/{name}")
    return sorted(entries)


def write_layer(root: Path, entries: Sequence[str], whiteouts: Sequence[str], out: Path, description: str) -> Layer:
    """Write ``entries`` of ``root`` (and ``.wh.`` files for ``whiteouts``) as a reproducible gzip layer at ``out``:
    sorted, numeric owners, mtimes clamped to SOURCE_DATE_EPOCH, no device nodes, fifos or sockets."""
    with out.open("wb") as raw:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
        hashing = _HashingWriter(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for rel in sorted({*entries, *(_whiteout(w) for w in whiteouts)}):
                if rel in {_whiteout(w) for w in whiteouts}:
                    info = tarfile.TarInfo(rel)
                    info.mtime = SOURCE_DATE_EPOCH
                    info.mode = 0o644
                    tar.addfile(info)
                    continue
                path = root / rel
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    continue
                info = tar.gettarinfo(str(path), arcname=rel)
                info.mtime = min(int(info.mtime), SOURCE_DATE_EPOCH)
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        gz.close()
    return Layer(
        digest="sha256:" + _file_sha256(out),
        diff_id="sha256:" + hashing.sha256.hexdigest(),
        size=out.stat().st_size,
        description=description,
    )


def _whiteout(rel: str) -> str:
    parent, _, name = rel.rpartition("/")
    return f"{parent}/.wh.{name}" if parent else f".wh.{name}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> tuple[object, ...]:
    st = path.lstat()
    if stat.S_ISREG(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, _file_sha256(path))
    if stat.S_ISLNK(st.st_mode):
        return (st.st_mode, st.st_uid, st.st_gid, os.readlink(path))
    return (st.st_mode, st.st_uid, st.st_gid)


def snapshot(root: Path, subtrees: Sequence[str]) -> dict[str, tuple[object, ...]]:
    """Mode, owner and content of every entry under ``subtrees``: what :func:`changes` compares."""
    return {rel: _signature(root / rel) for rel in _layer_entries(root, subtrees) if (root / rel).exists()}


def changes(
    before: Mapping[str, tuple[object, ...]], after: Mapping[str, tuple[object, ...]]
) -> tuple[list[str], list[str]]:
    """(entries added or changed, with their parent directories; entries removed) between two snapshots.

    Contents, not mtimes, decide, so a file rewritten with the same bytes is not part of the layer."""
    changed = {rel for rel, signature in after.items() if before.get(rel) != signature}
    for rel in list(changed):
        parts = rel.split("/")
        changed.update("/".join(parts[:i]) for i in range(1, len(parts)))
    removed = [rel for rel in before if rel not in after and rel.rpartition("/")[0] not in set(before) - set(after)]
    return sorted(changed), sorted(removed)


# --- the build -----------------------------------------------------------------------------------------------------


def _project_version() -> str:
    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


def _wheelhouse(lock: Path, log: Callable[[str], None]) -> Path:
    """The lock's wheels for CPython 3.11 on manylinux x86_64, downloaded once into the cache (PyPI only)."""
    key = _digest_of("wheels", lock.read_text(), PLATFORM_TAGS)[:16]
    final = cache_root() / "wheels" / key
    if (final / "done").is_file():
        return final
    log(f"wheels for {lock.name} ...")
    with _publish(final) as scratch:
        platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                *platforms,
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                "--dest",
                str(scratch),
                "-r",
                str(lock),
            ],
            what=f"pip download -r {lock.name}",
        )
        (scratch / "done").write_text("")
    return final


def _project_wheel(recipe: ImageRecipe, key: str, log: Callable[[str], None]) -> Path:
    """The project's wheel, built on the host from only ``recipe.sources`` (the files the Dockerfile copies)."""
    final = cache_root() / "project-wheels" / key
    if (final / "done").is_file():
        return next(final.glob("*.whl"))
    log("project wheel ...")
    with _publish(final) as scratch, tempfile.TemporaryDirectory(prefix="torghut-wheel-src-") as source:
        for rel in recipe.sources:
            src, dest = REPO_ROOT / rel, Path(source) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                shutil.copy2(src, dest)
        constraints = Path(source) / "build-constraints.txt"
        constraints.write_text(BUILD_BACKEND + "\n")
        env = {**os.environ, "PIP_CONSTRAINT": str(constraints), "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        _run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps"),
                *("--wheel-dir", str(scratch), source),
            ],
            what="pip wheel (the project)",
            env=env,
        )
        (scratch / "done").write_text("")
    return next(final.glob("*.whl"))


def _copy_into(root: Path, source: Path, image_path: str) -> None:
    dest = root / image_path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copyfile(source, dest)
    for path in [dest, *dest.rglob("*")]:
        os.chown(path, 0, 0)
        path.chmod(0o755 if path.is_dir() else 0o644)


def _inputs_key(recipe: ImageRecipe, runtime_key: str, builder_key: str, packages: Mapping[str, str]) -> str:
    sources = [REPO_ROOT / rel for rel in recipe.sources]
    files = [REPO_ROOT / rel for rel, _ in recipe.files]
    return _digest_of(
        "image",
        recipe,
        runtime_key,
        builder_key,
        dict(packages),
        (REPO_ROOT / recipe.lock).read_text(),
        _tree_digest(sources, REPO_ROOT),
        _tree_digest(files, REPO_ROOT),
        Path(__file__).read_text(),
        BUILD_BACKEND,
    )[:16]


def build_image(
    recipe: ImageRecipe,
    *,
    tag: str | None = None,
    force: bool = False,
    refresh_base: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> BuiltImage:
    """Build ``recipe`` (or find it in the cache): the OCI layout and the docker archive. See the module docstring.

    ``force`` builds the deps and app layers and the image again (the Debian trees stay cached); ``refresh_base``
    also runs mmdebstrap again."""
    started = time.monotonic()
    root = cache_root()
    with _cache_lock(root):
        timings: dict[str, float] = {}

        def timed(step: str, since: float) -> None:
            timings[step] = round(time.monotonic() - since, 1)
            log(f"{recipe.name}: {step} {timings[step]:.1f}s")

        t = time.monotonic()
        runtime_hooks: tuple[str, ...] = (_USER_HOOK,)
        runtime_key = _debian_key(RUNTIME_PACKAGES, runtime_hooks)
        builder_key = _debian_key(BUILDER_PACKAGES, ())
        trees = _debian_trees(
            {"runtime": (RUNTIME_PACKAGES, runtime_hooks), "builder": (BUILDER_PACKAGES, ())},
            refresh=refresh_base,
            log=log,
        )
        timed("debian trees", t)
        # The trees' package lists are inputs too: a refreshed tree with newer Debian packages is a new image.
        packages = {name: (tree.parent / "packages.txt").read_text() for name, tree in trees.items()}
        key = _inputs_key(recipe, runtime_key, builder_key, packages)
        tag = tag or f"{_project_version()}-{key[:12]}"
        final = root / recipe.name / key
        record = final / "image.json"
        if record.is_file() and not (force or refresh_base):
            data = json.loads(record.read_text())
            if data.get("tag") == tag:
                return _built(recipe, data, final, cache_hit=True, seconds=time.monotonic() - started)

        t = time.monotonic()
        base_layer = _base_layer(trees["runtime"], runtime_key, refresh=refresh_base)
        timed("base layer", t)
        t = time.monotonic()
        wheels = _wheelhouse(REPO_ROOT / recipe.lock, log)
        project_wheel = _project_wheel(recipe, key, log) if not force else _rebuilt_wheel(recipe, key, log)
        timed("wheels", t)

        with _publish(final) as scratch:
            blobs = scratch / "oci" / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            base_blob = base_layer[1]
            shutil.copyfile(base_blob, blobs / base_layer[0].digest.removeprefix("sha256:"))
            t = time.monotonic()
            deps, app = _venv_layers(recipe, trees["builder"], wheels, project_wheel, blobs)
            timed("venv layers", t)
            t = time.monotonic()
            layers = (base_layer[0], deps, app)
            config_digest, digest = _write_oci(recipe, layers, scratch / "oci", tag)
            _run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    f"oci:{scratch / 'oci'}:{tag}",
                    f"docker-archive:{scratch / f'{recipe.name}.docker.tar'}:localhost/{recipe.name}:{tag}",
                ],
                what="skopeo copy (docker archive)",
            )
            timed("oci layout and docker archive", t)
            image = BuiltImage(
                recipe.name, tag, key, digest, config_digest, layers, final, seconds=time.monotonic() - started
            )
            (scratch / "image.json").write_text(json.dumps(image.to_json() | {"timings": timings}, indent=2) + "\n")
        _prune(root / recipe.name, keep=2, protect={key})
        _prune(root / "project-wheels", keep=4, protect={key})
        return BuiltImage(
            recipe.name,
            tag,
            key,
            digest,
            config_digest,
            layers,
            final,
            seconds=time.monotonic() - started,
            timings=timings,
        )


def _debian_trees(
    wanted: Mapping[str, tuple[Sequence[str], Sequence[str]]], *, refresh: bool, log: Callable[[str], None]
) -> dict[str, Path]:
    """The named Debian trees (packages, customize hooks), the missing ones built side by side."""
    trees: dict[str, Path] = {}
    errors: list[BaseException] = []

    def build(name: str, packages: Sequence[str], hooks: Sequence[str]) -> None:
        try:
            trees[name] = _debian_tree(packages, hooks, refresh=refresh, log=log)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(name, *spec)) for name, spec in wanted.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    _prune(cache_root() / "debian", keep=4, protect={tree.parent.name for tree in trees.values()})
    return trees


def _prune(parent: Path, *, keep: int, protect: set[str]) -> None:
    """Remove all but the ``keep`` newest entries of ``parent`` (and never those in ``protect``): a key that changed
    leaves its old build behind, hundreds of MB each."""
    entries = sorted(
        (p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for stale in entries[keep:]:
        if stale.name not in protect:
            _remove_tree(stale)


def _built(recipe: ImageRecipe, data: Mapping[str, Any], final: Path, *, cache_hit: bool, seconds: float) -> BuiltImage:
    return BuiltImage(
        name=recipe.name,
        tag=str(data["tag"]),
        key=str(data["key"]),
        digest=str(data["digest"]),
        config_digest=str(data["config_digest"]),
        layers=tuple(Layer.from_json(layer) for layer in data["layers"]),
        directory=final,
        cache_hit=cache_hit,
        seconds=seconds,
        timings=dict(data.get("timings", {})),
    )


def _rebuilt_wheel(recipe: ImageRecipe, key: str, log: Callable[[str], None]) -> Path:
    shutil.rmtree(cache_root() / "project-wheels" / key, ignore_errors=True)
    return _project_wheel(recipe, key, log)


def _base_layer(rootfs: Path, runtime_key: str, *, refresh: bool) -> tuple[Layer, Path]:
    """The runtime tree as a layer (cached beside the tree; /dev, /proc and /sys kept as empty directories)."""
    final = rootfs.parent / "layer"
    if (final / "layer.json").is_file() and not refresh:
        return Layer.from_json(json.loads((final / "layer.json").read_text())), final / "layer.tar.gz"
    with _publish(final) as scratch:
        entries = [
            rel for rel in _layer_entries(rootfs) if not rel.startswith(("dev/", "proc/", "sys/", "run/", "tmp/"))
        ]
        layer = write_layer(rootfs, entries, (), scratch / "layer.tar.gz", f"debian {SUITE} {runtime_key}")
        (scratch / "layer.json").write_text(json.dumps(layer.to_json()) + "\n")
    return layer, final / "layer.tar.gz"


def _venv_layers(
    recipe: ImageRecipe, builder: Path, wheels: Path, project_wheel: Path, blobs: Path
) -> tuple[Layer, Layer]:
    """The Dockerfile's builder stage in a copy of the builder tree: the venv from the lock (layer 2), then the
    project and the recipe's files (layer 3, the difference)."""
    with tempfile.TemporaryDirectory(prefix="torghut-image-", dir=blobs.parents[2]) as work:
        root = Path(work) / "rootfs"
        _run(["cp", "-a", "--reflink=auto", str(builder), str(root)], what="copy the builder tree")
        try:
            shutil.copytree(wheels, root / "wheels")
            (root / "dist").mkdir()
            shutil.copyfile(project_wheel, root / "dist" / project_wheel.name)
            shutil.copyfile(REPO_ROOT / recipe.lock, root / "requirements.lock")
            _chroot(root, ["python3", "-m", "venv", VENV], what="python3 -m venv")
            pip = [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
            _chroot(root, [*pip, "--find-links", "/wheels", "-r", "/requirements.lock"], what="pip install -r lock")
            compile_venv = [f"{VENV}/bin/python", "-m", "compileall", "-q", "--invalidation-mode", "checked-hash"]
            _chroot(root, [*compile_venv, f"{VENV}/lib"], what="compileall (deps)")
            deps = write_layer(root, _layer_entries(root, ("opt/venv",)), (), blobs / "deps", "venv from the lock")
            before = snapshot(root, ("opt/venv", "app"))
            _chroot(root, [*pip, f"/dist/{project_wheel.name}"], what="pip install (the project)")
            for source, image_path in recipe.files:
                _copy_into(root, REPO_ROOT / source, image_path)
            _chroot(root, [*compile_venv, f"{VENV}/lib"], what="compileall (the project)")
            if recipe.smoke:
                _chroot(root, _smoke_argv(recipe), what=f"smoke test {' '.join(recipe.smoke)}")
            after = snapshot(root, ("opt/venv", "app"))
            changed, removed = changes(before, after)
            app = write_layer(root, changed, removed, blobs / "app", "the project")
        finally:
            _unmount_under(root)
        for layer, name in ((deps, "deps"), (app, "app")):
            (blobs / name).rename(blobs / layer.digest.removeprefix("sha256:"))
    return deps, app


def _smoke_argv(recipe: ImageRecipe) -> list[str]:
    command = " ".join(_shell_quote(arg) for arg in recipe.smoke)
    return ["/bin/sh", "-c", f"cd {recipe.workdir} && exec {VENV}/bin/{command} >/dev/null"]


def _shell_quote(arg: str) -> str:
    return arg if arg.replace("-", "").replace("/", "").replace(".", "").replace(":", "").isalnum() else f"'{arg}'"


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def image_config(recipe: ImageRecipe, layers: Sequence[Layer]) -> dict[str, Any]:
    """The OCI image config: user, entrypoint, env, ports, labels; dates at SOURCE_DATE_EPOCH."""
    created = datetime.fromtimestamp(SOURCE_DATE_EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config: dict[str, Any] = {
        "User": f"{USER_ID}:{USER_ID}",
        "Env": recipe.config_env(),
        "Entrypoint": list(recipe.entrypoint),
        "WorkingDir": recipe.workdir,
        "Labels": dict(recipe.labels),
        "ExposedPorts": {f"{port}/tcp": {} for port in recipe.ports},
    }
    if recipe.cmd:
        config["Cmd"] = list(recipe.cmd)
    return {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.description} for layer in layers],
    }


def _write_oci(recipe: ImageRecipe, layers: Sequence[Layer], layout: Path, tag: str) -> tuple[str, str]:
    blobs = layout / "blobs" / "sha256"
    config_digest, config_size = _write_blob(blobs, _canonical(image_config(recipe, layers)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": {"mediaType": _OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": _OCI_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    digest, size = _write_blob(blobs, _canonical(manifest))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_bytes(_canonical(index))
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return config_digest, digest


# --- command line --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torghut_localstack.imagebuild", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE", help=f"{' and/or '.join(RECIPES)} (default: both)")
    parser.add_argument("--tag", default=None, help="tag (default: <version>-<inputs hash>)")
    parser.add_argument("--force", action="store_true", help="build the venv layers and the image again")
    parser.add_argument("--refresh-base", action="store_true", help="run mmdebstrap again too")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.images) - set(RECIPES))
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)}: choose from {', '.join(RECIPES)}")
    for name in args.images or list(RECIPES):
        try:
            image = build_image(
                RECIPES[name], tag=args.tag, force=args.force, refresh_base=args.refresh_base, log=print
            )
        except ImageBuildError as exc:
            print(f"image {name}: {exc}", file=sys.stderr)
            return 1
        how = "cached" if image.cache_hit else "built"
        print(f"{image.ref} {how} in {image.seconds:.1f}s: {image.digest}, {image.compressed_size / 1e6:.1f} MB")
        print(f"  oci layout: {image.oci_layout}")
        print(f"  docker archive: {image.docker_archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

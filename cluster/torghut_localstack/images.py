"""Small images for the real node, built without Docker or a registry, and the import of any docker archive into
the node's containerd.

An image here is a root filesystem filled on the host (`umoci unpack` → files → `umoci repack`), its config set with
`umoci config`, then written as a docker archive by `skopeo copy oci:… docker-archive:…`. Archives are cached under
`<cache>/images/`, named by a hash of what went in, so a second build is a file lookup.

- `pause_image`: containerd's `sandbox_image` (the node pulls nothing): the `pause` program built from
  `cluster/gobuild/pause`.
- `busybox_image`: Debian's busybox-static with its applets linked in `/bin`: `sh`, `echo`, `wget`, `httpd`,
  `nslookup`, ... for tests that run real commands.

`import_archive` loads a docker archive (from here, or the operator image built elsewhere) with
`ctr -n k8s.io images import`, where the kubelet's CRI finds it; pods then use `imagePullPolicy: Never` or
`IfNotPresent`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
CTR = "ctr"
K8S_NAMESPACE = "k8s.io"
_RECIPE_VERSION = "1"  # bump when the build steps below change, so cached archives are rebuilt
_TOOL_TIMEOUT_S = 300.0


class ImageError(RuntimeError):
    """An image could not be built or imported; the message names the command and its output."""


@dataclass(frozen=True)
class Image:
    """A docker archive on disk and the reference it carries (`localhost/NAME:TAG`)."""

    reference: str
    archive: Path


def cache_dir() -> Path:
    root = os.environ.get("TORGHUT_CLUSTER_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "torghut-rollout-operator"
    )
    return Path(root) / "images"


def _run(argv: Sequence[str], *, timeout: float = _TOOL_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as error:
        raise ImageError(
            f"{argv[0]} is not installed (cluster/install-debian-deps.sh installs umoci, skopeo, containerd)"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise ImageError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from error
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _digest_of(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def build_rootfs_image(
    name: str,
    inputs: Sequence[bytes],
    populate: Callable[[Path], None],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str | None = None,
) -> Image:
    """`localhost/NAME:<hash of inputs>` as a cached docker archive; `populate(rootfs)` fills an empty root."""
    tag = _digest_of(_RECIPE_VERSION.encode(), name.encode(), *inputs, "\0".join([*entrypoint, "|", *cmd]).encode())
    reference = f"localhost/{name}:{tag}"
    archive = cache_dir() / f"{name}-{tag}.tar"
    if archive.is_file():
        return Image(reference, archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"image-{name}-", dir=archive.parent) as scratch:
        layout, bundle = Path(scratch) / "oci", Path(scratch) / "bundle"
        image = f"{layout}:{tag}"
        _run(["umoci", "init", "--layout", str(layout)])
        _run(["umoci", "new", "--image", image])
        _run(["umoci", "unpack", "--image", image, str(bundle)])
        populate(bundle / "rootfs")
        _run(["umoci", "repack", "--no-history", "--image", image, str(bundle)])
        config = ["umoci", "config", "--no-history", "--image", image, "--clear=config.entrypoint"]
        config += [f"--config.entrypoint={part}" for part in entrypoint]
        config += [f"--config.cmd={part}" for part in cmd]
        if user is not None:
            config.append(f"--config.user={user}")
        _run(config)
        partial = Path(scratch) / "image.tar"
        _run(["skopeo", "copy", "--quiet", f"oci:{image}", f"docker-archive:{partial}:{reference}"])
        partial.replace(archive)
    return Image(reference, archive)


def pause_image(pause_binary: Path) -> Image:
    """The pod sandbox image: `/pause` only, run as 65535 like registry.k8s.io/pause."""

    def populate(rootfs: Path) -> None:
        shutil.copy2(pause_binary, rootfs / "pause")
        (rootfs / "pause").chmod(0o755)

    return build_rootfs_image(
        "torghut-pause", [pause_binary.read_bytes()], populate, entrypoint=["/pause"], user="65535:65535"
    )


def busybox_image() -> Image:
    """Debian's busybox-static, every applet linked in /bin, `sh` by default."""
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static (cluster/install-debian-deps.sh)")
    binary = BUSYBOX.read_bytes()
    applets = _run([str(BUSYBOX), "--list"]).split()

    def populate(rootfs: Path) -> None:
        bin_dir = rootfs / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, bin_dir / "busybox")
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (bin_dir / applet).symlink_to("busybox")
        for directory in ("tmp", "etc", "www"):
            (rootfs / directory).mkdir(exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")

    return build_rootfs_image("torghut-busybox", [binary], populate, entrypoint=[], cmd=["/bin/sh"])


def import_archive(address: Path, archive: Path, *, timeout: float = _TOOL_TIMEOUT_S) -> str:
    """Import a docker archive into the containerd at `address` (namespace k8s.io); returns ctr's output."""
    return _run([CTR, f"--address={address}", "-n", K8S_NAMESPACE, "images", "import", str(archive)], timeout=timeout)


def tag(address: Path, source: str, target: str, *, timeout: float = _TOOL_TIMEOUT_S) -> None:
    """Name an image of the containerd at `address` (namespace k8s.io) `target` too (replacing that name)."""
    _run(
        [CTR, f"--address={address}", "-n", K8S_NAMESPACE, "images", "tag", "--force", source, target], timeout=timeout
    )


def digest_of(address: Path, reference: str) -> str:
    """The digest (`sha256:...`) of image `reference` in the containerd at `address` (namespace k8s.io)."""
    out = _run([CTR, f"--address={address}", "-n", K8S_NAMESPACE, "images", "ls", f"name=={reference}"])
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == reference:
            return fields[2]
    raise ImageError(f"{reference} is not in the containerd at {address}:\n{out}")


def imported(address: Path) -> list[str]:
    """References of the images in the node's containerd."""
    out = _run([CTR, f"--address={address}", "-n", K8S_NAMESPACE, "images", "list", "--quiet"])
    return out.split()

"""The images built without Docker (``torghut_localstack.imagebuild``): cached by their inputs, reproducible,
described by ``operator/Dockerfile``, and real containers: unpacked with umoci and run with runc as user 10001, the
simulator's image migrating a real Postgres with ``alembic upgrade heads`` and serving its probes.

A cold build runs mmdebstrap (minutes on 2 busy cores); later runs find the images in the cache. Missing tools
fail the tests with the install line, never skip them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from torghut_localstack import torghut_db
from torghut_localstack.imagebuild import OPERATOR, SIMULATOR, USER_ID, BuiltImage, build_image
from torghut_localstack.ports import free_port
from torghut_localstack.postgres import PostgresServer
from torghut_localstack.wait import NotYet, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "skopeo": "skopeo", "runc": "runc", "chroot": "coreutils"}
BUILD_TIMEOUT = 1800


def require_tools() -> None:
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(f"the image tests need {', '.join(missing)}: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        pytest.fail("the image build runs mmdebstrap --mode=root, chroot and runc: run the tests as root")


def show(line: str) -> None:
    print(line, flush=True)


@pytest.fixture(scope="module")
def operator_image() -> BuiltImage:
    require_tools()
    return build_image(OPERATOR, log=show)


@pytest.fixture(scope="module")
def simulator_image() -> BuiltImage:
    require_tools()
    return build_image(SIMULATOR, log=show)


# --- helpers -------------------------------------------------------------------------------------------------------


def blob(image: BuiltImage, digest: str) -> bytes:
    return (image.oci_layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def image_config(image: BuiltImage) -> dict[str, Any]:
    manifest = json.loads(blob(image, image.digest))
    config: dict[str, Any] = json.loads(blob(image, manifest["config"]["digest"]))
    return config


def layer_names(image: BuiltImage, index: int) -> list[str]:
    path = image.oci_layout / "blobs" / "sha256" / image.layers[index].digest.removeprefix("sha256:")
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "operator" / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line.removesuffix(chr(92)).strip()}"
        if not line.endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            instructions.append((instruction.upper(), args.strip()))
            pending = ""
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return [("ARG", a) for i, a in instructions[:last_from] if i == "ARG"] + instructions[last_from:]


def dockerfile_values(pairs: str) -> dict[str, str]:
    """``KEY=value KEY2="value 2"`` of an ENV or LABEL instruction."""
    return {key: value.strip('"') for key, value in re.findall(r'([\w.]+)=("[^"]*"|\S+)', pairs)}


class Container:
    """An unpacked image run by runc with its own state directory; every run is deleted afterwards."""

    def __init__(self, image: BuiltImage, workdir: Path) -> None:
        self.bundle = workdir / "bundle"
        self.state = workdir / "runc-state"
        done = subprocess.run(
            ["umoci", "unpack", "--image", f"{image.oci_layout}:{image.tag}", str(self.bundle)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"umoci unpack failed: {done.stderr}"
        self.base_config = json.loads((self.bundle / "config.json").read_text())

    def configure(self, args: Sequence[str] | None, *, env: dict[str, str] | None, host_network: bool) -> str:
        config = json.loads(json.dumps(self.base_config))
        process = config["process"]
        process["terminal"] = False
        if args is not None:
            process["args"] = list(args)
        process["env"] = [*process["env"], *(f"{k}={v}" for k, v in (env or {}).items())]
        if host_network:  # Postgres and the test's HTTP client are on the host's 127.0.0.1
            namespaces = config["linux"]["namespaces"]
            config["linux"]["namespaces"] = [n for n in namespaces if n["type"] != "network"]
        (self.bundle / "config.json").write_text(json.dumps(config))
        return f"torghut-test-{uuid.uuid4().hex[:12]}"

    def run(
        self, args: Sequence[str] | None, *, env: dict[str, str] | None = None, host_network: bool = False
    ) -> subprocess.CompletedProcess[str]:
        name = self.configure(args, env=env, host_network=host_network)
        try:
            return subprocess.run(
                ["runc", "--root", str(self.state), "run", "--bundle", str(self.bundle), name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            self.delete(name)

    def start(self, args: Sequence[str], *, log: Path, host_network: bool = True) -> tuple[str, subprocess.Popen[str]]:
        name = self.configure(args, env=None, host_network=host_network)
        with log.open("w") as out:
            popen = subprocess.Popen(
                ["runc", "--root", str(self.state), "run", "--bundle", str(self.bundle), name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return name, popen

    def delete(self, name: str) -> None:
        subprocess.run(
            ["runc", "--root", str(self.state), "delete", "--force", name],
            capture_output=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def operator_container(operator_image: BuiltImage, tmp_path: Path) -> Container:
    return Container(operator_image, tmp_path)


@pytest.fixture
def simulator_container(simulator_image: BuiltImage, tmp_path: Path) -> Container:
    return Container(simulator_image, tmp_path)


@pytest.fixture
def migrations_db(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database (its libpq DSN on 127.0.0.1) and the role torghut_app the chain expects."""
    with torghut_db.temporary_database(postgres.dsn(), prefix="image_alembic") as url:
        engine = torghut_db.make_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'torghut_app') THEN "
                "CREATE ROLE torghut_app LOGIN; END IF; EXCEPTION WHEN duplicate_object OR unique_violation THEN "
                "NULL; END $$"
            )
        engine.dispose()
        yield url.replace("postgresql+psycopg://", "postgresql://", 1)


# --- cache and reproducibility -------------------------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_a_second_build_with_the_same_inputs_is_a_cache_hit(operator_image: BuiltImage) -> None:
    again = build_image(OPERATOR)
    assert again.cache_hit
    assert (again.digest, again.key, again.ref) == (operator_image.digest, operator_image.key, operator_image.ref)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_a_forced_rebuild_gives_the_same_digest(operator_image: BuiltImage) -> None:
    """Layers above the cached Debian base, the config, the manifest and the docker archive, byte for byte."""
    archive = sha256_file(operator_image.docker_archive)
    rebuilt = build_image(OPERATOR, force=True, log=show)
    assert not rebuilt.cache_hit
    assert rebuilt.layers == operator_image.layers
    assert (rebuilt.config_digest, rebuilt.digest) == (operator_image.config_digest, operator_image.digest)
    assert sha256_file(rebuilt.docker_archive) == archive


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_image_is_an_oci_layout_and_a_docker_archive_of_localhost_name_tag(operator_image: BuiltImage) -> None:
    index = json.loads((operator_image.oci_layout / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == operator_image.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == operator_image.tag
    assert operator_image.ref == f"localhost/torghut-rollout-operator:{operator_image.tag}"
    with tarfile.open(operator_image.docker_archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        [manifest] = json.loads(member.read())
    assert manifest["RepoTags"] == [operator_image.ref]
    assert len(manifest["Layers"]) == 3


# --- the Dockerfile describes the same image -----------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_dockerfile_describes_the_built_images_user_entrypoint_and_environment(operator_image: BuiltImage) -> None:
    stage = runtime_stage()
    config = image_config(operator_image)["config"]
    [user] = [args for instruction, args in stage if instruction == "USER"]
    assert config["User"] == user == f"{USER_ID}:{USER_ID}"
    [entrypoint] = [args for instruction, args in stage if instruction == "ENTRYPOINT"]
    assert config["Entrypoint"] == json.loads(entrypoint)
    assert "Cmd" not in config
    [workdir] = [args for instruction, args in stage if instruction == "WORKDIR"]
    assert config["WorkingDir"] == workdir
    env = {k: v for instruction, args in stage if instruction == "ENV" for k, v in dockerfile_values(args).items()}
    image_env = dict(entry.split("=", 1) for entry in config["Env"])
    assert env.pop("PATH") == "/opt/venv/bin:$PATH"
    assert image_env.pop("PATH").startswith("/opt/venv/bin:")
    assert image_env == env
    labels = {k: v for instruction, args in stage if instruction == "LABEL" for k, v in dockerfile_values(args).items()}
    assert config["Labels"] == labels
    exposed = {f"{port}/tcp" for instruction, args in stage if instruction == "EXPOSE" for port in args.split()}
    assert set(config["ExposedPorts"]) == exposed


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_image_holds_exactly_the_lock_files_packages_and_the_operator(operator_image: BuiltImage) -> None:
    """What the Dockerfile installs (the runtime lock, then the package) is what the venv layers hold; pip and
    setuptools are the ones Debian's ``python3 -m venv`` seeds in both builds."""
    site = "opt/venv/lib/python3.11/site-packages/"
    installed: dict[str, str] = {}
    for index in (1, 2):
        for name in layer_names(operator_image, index):
            match = re.fullmatch(re.escape(site) + r"([^/]+)-([^-/]+)\.dist-info", name)
            if match:
                installed[normalize(match.group(1))] = match.group(2)
    lock = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (REPO / OPERATOR.lock).read_text(), re.MULTILINE))
    expected = {normalize(name): version for name, version in lock.items()}
    expected["torghut-rollout-operator"] = "0.1.0"
    seeded = {name: installed.pop(name) for name in ("pip", "setuptools") if name in installed}
    assert installed == expected
    assert set(seeded) == {"pip", "setuptools"}, "python3 -m venv of Debian's python3-venv seeds both"
    assert not [n for n in layer_names(operator_image, 2) if "torghut_localstack" in n], "as the Dockerfile copies"


# --- real containers -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_operator_image_runs_under_runc_as_user_10001_with_the_dockerfiles_python(
    operator_container: Container,
) -> None:
    probe = "import os, platform, torghut_operator; print(os.getuid(), os.getgid(), platform.python_version())"
    done = operator_container.run(["python", "-c", probe])
    assert done.returncode == 0, done.stderr
    [python_arg] = [a for i, a in runtime_stage() if i == "ARG" and a.startswith("PYTHON_VERSION=")]
    assert done.stdout.split() == [str(USER_ID), str(USER_ID), python_arg.split("=", 1)[1]]
    entrypoint = operator_container.base_config["process"]["args"]
    assert entrypoint[:2] == ["torghut-operator", "run"]
    done = operator_container.run([*entrypoint[:2], "--help"])
    assert done.returncode == 0, done.stderr
    assert "--liveness" in done.stdout


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_simulator_image_migrates_a_real_postgres_with_alembic_upgrade_heads(
    simulator_container: Container, migrations_db: str
) -> None:
    done = simulator_container.run(
        ["alembic", "-c", "/app/alembic.ini", "upgrade", "heads"], env={"DB_DSN": migrations_db}, host_network=True
    )
    assert done.returncode == 0, done.stderr
    assert "0007_autonomy_permissions_backfill_routes" in done.stderr, "alembic logs each revision"
    engine = torghut_db.make_engine(migrations_db)
    try:
        assert torghut_db.alembic_heads(engine) == sorted(torghut_db.HEAD_HEADS)
    finally:
        engine.dispose()


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_simulator_runs_as_a_container_and_answers_its_probe(
    simulator_container: Container, tmp_path: Path
) -> None:
    port = free_port()
    args = [*simulator_container.base_config["process"]["args"][:3], "--host", "127.0.0.1", "--port", str(port)]
    name, popen = simulator_container.start(args, log=tmp_path / "simulator.log")
    try:

        def healthy() -> dict[str, Any]:
            if popen.poll() is not None:
                raise AssertionError(
                    f"the container exited {popen.returncode}: {(tmp_path / 'simulator.log').read_text()}"
                )
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError as exc:
                raise NotYet(str(exc)) from exc
            body: dict[str, Any] = response.json()
            return body

        assert wait_for(healthy, timeout=60, what="the simulator container's /healthz", retry_on=(NotYet,)) == {
            "status": "ok",
            "service": "torghut",
        }
    finally:
        simulator_container.delete(name)
        popen.wait(timeout=60)

"""The operator image as a cluster admin meets it, from the files alone: the Dockerfile builds a pinned, non-root
image from the lock file, the runtime lock pins what the development lock pins, and the CRD directory applies.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest

from torghut_localstack import imagebuild

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "operator" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


# --- rendering ---------------------------------------------------------------------------------------------------


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            lines.append((instruction.upper(), args.strip()))
            pending = ""
    return lines


def test_the_crd_directory_still_applies_with_kubectl_apply_f() -> None:
    """`kubectl apply -f crds/` reads *.yaml/*.yml/*.json: the kustomization there must not be one of them."""
    crd_dir = REPO / "crds"
    assert (crd_dir / "Kustomization").is_file()
    applied_by_f = [p.name for p in crd_dir.iterdir() if p.suffix in {".yaml", ".yml", ".json"}]
    assert applied_by_f == ["torghutrollouts.yaml"]


def test_dockerfile_builds_on_debians_own_python_as_the_dockerless_build_does() -> None:
    """Same suite, same Debian packages per stage, same Python version as ``torghut_localstack.imagebuild``."""
    instructions = dockerfile_instructions()
    args = dict(arg.split("=", 1) for instruction, arg in instructions if instruction == "ARG" and "=" in arg)
    assert args["PYTHON_VERSION"] == imagebuild.PYTHON_VERSION
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(froms) == 2, "multi-stage: build tools stay out of the runtime image"
    for source in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source.split()[0])
        assert re.fullmatch(rf"debian:{imagebuild.SUITE}(-\d{{8}})?-slim(@sha256:[0-9a-f]{{64}})?", image), image
    installs = [
        re.search(r"apt-get install -y --no-install-recommends ([a-z0-9. -]+?) &&", run)
        for instruction, run in instructions
        if instruction == "RUN" and "apt-get install" in run
    ]
    packages = [tuple(match.group(1).split()) if match else () for match in installs]
    assert packages == [imagebuild.BUILDER_PACKAGES, imagebuild.RUNTIME_PACKAGES]


def test_dockerfile_installs_the_lock_file_then_the_package_without_resolving() -> None:
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    lock_installs = [run for run in runs if "-r requirements.runtime.lock" in run]
    assert lock_installs, "install the dependencies from requirements.runtime.lock"
    assert "--no-deps" in lock_installs[0], "the lock is complete: nothing may be resolved beyond it"
    package_installs = [run for run in runs if re.search(r"pip install .*--no-deps \.(\s|$)", run)]
    assert package_installs, "the operator package must be installed with --no-deps, after the lock file"
    assert runs.index(lock_installs[0]) < runs.index(package_installs[0])
    # --no-deps everywhere: every runtime dependency must be in the lock, or the image starts without it.
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {
        re.split(r"[=<>\[ ]", line)[0].lower().replace("_", "-")
        for line in (REPO / "requirements.runtime.lock").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    }
    for dependency in dependencies:
        name = re.split(r"[=<>\[ ;]", dependency)[0].lower().replace("_", "-")
        assert name in locked, f"{name} is a runtime dependency missing from requirements.runtime.lock"
    assert not {"pytest", "mypy", "ruff"} & locked, "test and lint tools stay out of the image"


def test_the_runtime_lock_pins_exactly_what_the_development_lock_pins() -> None:
    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.MULTILINE))

    runtime, development = pins(REPO / "requirements.runtime.lock"), pins(REPO / "requirements.lock")
    assert runtime
    assert {name: version for name, version in runtime.items() if development.get(name) != version} == {}
    # the simulator's image: the runtime lock plus the Alembic chain's packages, at the development lock's versions
    simulator = pins(REPO / "requirements.sim.lock")
    assert {name: version for name, version in simulator.items() if development.get(name) != version} == {}
    assert {name: version for name, version in runtime.items() if simulator.get(name) != version} == {}
    assert set(simulator) - set(runtime) == {"alembic", "mako", "markupsafe"}


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list keeps .venv, .git, .local and secrets out of the build context"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copies = [
        args.split()
        for instruction, args in dockerfile_instructions()
        if instruction == "COPY" and not args.startswith("--from")
    ]
    sources = {source.rstrip("/") for parts in copies for source in parts[:-1]}
    assert sources == allowed
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"

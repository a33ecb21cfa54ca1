"""The real node's images are built without Docker or a registry (umoci, skopeo) and cached by their inputs."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from torghut_localstack import images

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORGHUT_CLUSTER_CACHE", str(tmp_path))
    return tmp_path / "images"


def test_the_busybox_image_is_a_docker_archive_with_its_applets_and_is_cached(cache: Path) -> None:
    image = images.busybox_image()

    assert image.archive.parent == cache
    assert image.reference.startswith("localhost/torghut-busybox:")
    with tarfile.open(image.archive) as archive:
        (manifest,) = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
    assert manifest["RepoTags"] == [image.reference]
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert config["os"] == "linux"

    started = time.monotonic()
    again = images.busybox_image()
    assert again == image
    assert time.monotonic() - started < 2.0, "a second build with the same inputs is a cache hit"


def test_the_pause_image_runs_only_the_pause_program_as_65535(cache: Path, tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    pause.write_bytes(Path("/bin/busybox").read_bytes())  # any static binary: only packaging is under test

    image = images.pause_image(pause)

    with tarfile.open(image.archive) as archive:
        (manifest,) = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"

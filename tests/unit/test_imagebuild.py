"""The image builder's reproducibility rules on small trees in tmp_path: layers sorted, owners numeric, mtimes
clamped, gzip without a date, layer differences by content, and the config the recipes describe."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from torghut_localstack import imagebuild
from torghut_localstack.imagebuild import OPERATOR, SIMULATOR, SOURCE_DATE_EPOCH, changes, snapshot, write_layer

pytestmark = pytest.mark.unit


def make_tree(root: Path, *, mtime: int, reverse: bool = False) -> list[str]:
    files = {"opt/venv/bin/tool": "#!/bin/sh\n", "opt/venv/lib/a.py": "A = 1\n", "opt/venv/lib/b.py": "B = 2\n"}
    for rel, content in sorted(files.items(), reverse=reverse):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (root / "opt/venv/bin/tool").chmod(0o755)
    (root / "opt/venv/bin/python3").symlink_to("/usr/bin/python3")
    for path in [*root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return imagebuild._layer_entries(root, ("opt/venv",))


def members(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob, "r:gz") as tar:
        return tar.getmembers()


def test_the_same_tree_gives_the_same_layer_whatever_its_dates_and_creation_order(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    entries_one = make_tree(first, mtime=SOURCE_DATE_EPOCH + 86_400)
    entries_two = make_tree(second, mtime=SOURCE_DATE_EPOCH + 7 * 86_400, reverse=True)
    assert entries_one == entries_two
    layer_one = write_layer(first, entries_one, (), tmp_path / "one.tar.gz", "test")
    layer_two = write_layer(second, entries_two, (), tmp_path / "two.tar.gz", "test")
    assert (layer_one.digest, layer_one.diff_id) == (layer_two.digest, layer_two.diff_id)
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()


def test_layer_entries_are_sorted_clamped_and_owned_by_numbers_only(tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "root", mtime=SOURCE_DATE_EPOCH + 1000)
    write_layer(tmp_path / "root", entries, (), tmp_path / "layer.tar.gz", "test")
    infos = members(tmp_path / "layer.tar.gz")
    names = [info.name for info in infos]
    assert names == sorted(names)
    assert names[:2] == ["opt", "opt/venv"], "parents before children"
    assert {info.mtime for info in infos} == {SOURCE_DATE_EPOCH}
    assert {(info.uname, info.gname) for info in infos} == {("", "")}
    link = next(info for info in infos if info.name == "opt/venv/bin/python3")
    assert link.issym()
    assert link.linkname == "/usr/bin/python3"
    assert next(info for info in infos if info.name == "opt/venv/bin/tool").mode & 0o777 == 0o755


def test_older_mtimes_are_kept(tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "root", mtime=SOURCE_DATE_EPOCH - 3600)
    write_layer(tmp_path / "root", entries, (), tmp_path / "layer.tar.gz", "test")
    assert {info.mtime for info in members(tmp_path / "layer.tar.gz")} == {SOURCE_DATE_EPOCH - 3600}


def test_the_gzip_header_has_no_name_and_no_date(tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "root", mtime=SOURCE_DATE_EPOCH)
    write_layer(tmp_path / "root", entries, (), tmp_path / "layer.tar.gz", "test")
    header = (tmp_path / "layer.tar.gz").read_bytes()[:10]
    assert header[3] & 0x08 == 0, "FNAME flag unset"
    assert header[4:8] == b"\0\0\0\0", "MTIME zero"


def test_the_diff_id_is_the_hash_of_the_uncompressed_tar(tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "root", mtime=SOURCE_DATE_EPOCH)
    layer = write_layer(tmp_path / "root", entries, (), tmp_path / "layer.tar.gz", "test")
    uncompressed = gzip.decompress((tmp_path / "layer.tar.gz").read_bytes())
    assert layer.diff_id == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    assert layer.size == (tmp_path / "layer.tar.gz").stat().st_size
    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
        assert tar.getnames()


def test_changes_are_decided_by_content_not_by_dates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, mtime=SOURCE_DATE_EPOCH)
    before = snapshot(root, ("opt/venv",))
    (root / "opt/venv/lib/a.py").write_text("A = 1\n")  # same bytes, new mtime
    (root / "opt/venv/lib/b.py").write_text("B = 3\n")
    (root / "opt/venv/lib/pkg").mkdir()
    (root / "opt/venv/lib/pkg/new.py").write_text("")
    (root / "opt/venv/bin/tool").unlink()
    changed, removed = changes(before, snapshot(root, ("opt/venv",)))
    assert changed == [
        "opt",
        "opt/venv",
        "opt/venv/lib",
        "opt/venv/lib/b.py",
        "opt/venv/lib/pkg",
        "opt/venv/lib/pkg/new.py",
    ]
    assert removed == ["opt/venv/bin/tool"]


def test_a_removed_file_becomes_a_whiteout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, mtime=SOURCE_DATE_EPOCH)
    write_layer(root, ["opt"], ["opt/venv/bin/tool"], tmp_path / "layer.tar.gz", "test")
    assert [info.name for info in members(tmp_path / "layer.tar.gz")] == ["opt", "opt/venv/bin/.wh.tool"]


def test_the_operator_config_is_the_dockerfiles_user_entrypoint_and_environment() -> None:
    config = imagebuild.image_config(OPERATOR, [])
    assert config["created"] == "2025-01-01T00:00:00Z"
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Entrypoint"] == ["torghut-operator", "run", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert "Cmd" not in config["config"]
    assert config["config"]["Env"][0].startswith("PATH=/opt/venv/bin:")
    assert set(config["config"]["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}


def test_the_simulator_image_carries_the_migration_chain_at_the_path_its_job_runs() -> None:
    config = imagebuild.image_config(SIMULATOR, [])
    assert config["config"]["User"] == "10001:10001"
    assert ("cluster/torghut_localstack/torghut_migrations/alembic.ini", "/app/alembic.ini") in SIMULATOR.files
    assert config["config"]["Entrypoint"] == ["python", "-m", "torghut_localstack.simulator"]
    assert config["config"]["Cmd"][:2] == ["--host", "0.0.0.0"]
    assert SIMULATOR.lock == "requirements.sim.lock"


def test_the_cache_follows_the_binaries_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORGHUT_CLUSTER_CACHE", str(tmp_path / "c"))
    assert imagebuild.cache_root() == tmp_path / "c" / "images"
    monkeypatch.delenv("TORGHUT_CLUSTER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert imagebuild.cache_root() == tmp_path / "x" / "torghut-rollout-operator" / "images"

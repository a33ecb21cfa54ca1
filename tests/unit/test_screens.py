"""The README's pictures are the plugin's views as they render now: `make screens` rewrites them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torghut_localstack import screens

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_pictures_are_what_the_plugin_renders_now() -> None:
    current = screens.pictures()
    committed = {p.name: p.read_text() for p in screens.OUT.glob("*.svg")}
    stale = sorted(name for name, svg in current.items() if committed.get(name) != svg)
    assert not stale, f"run `make screens`: {', '.join(stale)} out of date"
    assert set(committed) == set(current), "docs/screens holds pictures `make screens` no longer makes"


@pytest.mark.parametrize("width", screens.WIDTHS)
def test_every_view_fits_its_width_and_shows_phase_stage_ready_and_age(width: int) -> None:
    for view in ("status", "list", "history", "why"):
        _, text = screens.render(view, width)
        lines = text.splitlines()
        assert max(len(line.rstrip()) for line in lines) <= width, view
        for needle in ("Promoting", "promote:live", "False", "97m"):
            assert any(needle in line for line in lines), (view, width, needle)


def test_the_readme_shows_the_pictures_and_links_only_inside_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme) + re.findall(r'src="([^"]+)"', readme)
    assert targets
    for target in targets:
        assert not re.match(r"[a-z]+:", target), f"README links outside the repository: {target}"
        path = target.split("#")[0]
        if path:
            assert (REPO / path).exists(), f"README links to a missing file: {target}"
    for name in ("status-100.svg", "why-100.svg", "report-100.svg"):
        assert f"docs/screens/{name}" in readme

"""A new rollout's first turn waits for Kopf's own first write (its finalizer): racing it fails the status write's
precondition and costs a whole turn (make bench: one 409 per rollout before)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import kopf
import pytest

from torghut_operator.app.handlers import _adoption
from torghut_operator.app.settings import DIFF_BASE_ANNOTATION, FINALIZER, adopted

pytestmark = pytest.mark.unit


def test_a_rollout_is_adopted_once_kopf_wrote_its_finalizer() -> None:
    assert not adopted({})
    assert not adopted({"finalizers": ["other"], "annotations": {DIFF_BASE_ANNOTATION: "{}"}})
    assert adopted({"finalizers": ["other", FINALIZER]})
    assert adopted({"deletionTimestamp": "2026-12-02T00:00:00Z"}), "a rollout that is going waits for nothing"


def test_the_first_turn_starts_when_kopf_s_writes_arrive_not_before() -> None:
    async def scenario() -> float:
        meta: dict[str, Any] = {}
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def kopf_writes(step: int) -> None:  # as Kopf's watch would: update the live view, then wake
            if step == 1:
                meta["annotations"] = {"unrelated": "change"}
            else:
                meta["finalizers"] = [FINALIZER]
            wake.set()

        loop.call_later(0.05, kopf_writes, 1)
        loop.call_later(0.10, kopf_writes, 2)
        started = time.monotonic()
        await _adoption(cast(kopf.Meta, meta), wake, seconds=5.0)
        assert adopted(meta)
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.09 <= waited < 2.0


def test_without_kopf_s_writes_the_first_turn_still_starts_after_the_bound() -> None:
    async def scenario() -> float:
        started = time.monotonic()
        await _adoption(cast(kopf.Meta, {}), asyncio.Event(), seconds=0.2)
        return time.monotonic() - started

    assert 0.19 <= asyncio.run(scenario()) < 2.0

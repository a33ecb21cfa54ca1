"""A new rollout's first turn waits for Kopf's own first write (its finalizer): racing it fails the status write's
precondition and costs a whole turn (make bench: one 409 per rollout before)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from torghut_operator.app.handlers import _adoption, _idle, drive
from torghut_operator.app.runtime import Waker
from torghut_operator.app.settings import DIFF_BASE_ANNOTATION, FINALIZER, adopted
from torghut_operator.shell.reconciler import Turn

pytestmark = pytest.mark.unit


def test_a_rollout_is_adopted_once_kopf_wrote_its_finalizer() -> None:
    assert not adopted({})
    assert not adopted({"finalizers": ["other"], "annotations": {DIFF_BASE_ANNOTATION: "{}"}})
    assert adopted({"finalizers": ["other", FINALIZER]})
    assert adopted({"deletionTimestamp": "2026-12-02T00:00:00Z"}), "a rollout that is going waits for nothing"


def test_the_first_turn_starts_when_kopf_s_writes_arrive_not_before() -> None:
    async def scenario() -> float:
        meta: dict[str, Any] = {}
        wake = Waker()
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
        await _adoption(cast(kopf.Meta, {}), Waker(), seconds=0.2)
        return time.monotonic() - started

    assert 0.19 <= asyncio.run(scenario()) < 2.0


class _Stopped:
    """Kopf's ``stopped`` flag as the daemon reads it: truthy once set."""

    def __init__(self) -> None:
        self.flag = False

    def __bool__(self) -> bool:
        return self.flag


def _drive_once(meta: dict[str, Any], finalizer_after: float | None) -> list[tuple[str, bool]]:
    """Run the rollout's daemon for one turn; Kopf's finalizer arrives after ``finalizer_after`` seconds (as Kopf's
    watch delivers it: the live view changes, then the rollout's waker is set). Returns what it called, in order,
    and whether the rollout was adopted at each call."""
    calls: list[tuple[str, bool]] = []
    stopped = _Stopped()
    body: dict[str, Any] = {"metadata": meta, "spec": {}}

    class Reconciler:
        async def read_ahead(self, namespace: str, name: str, live: Any) -> None:
            calls.append(("read ahead", adopted(live["metadata"])))

        async def reconcile(self, namespace: str, name: str, live: Any) -> Turn:
            calls.append(("turn", adopted(live["metadata"])))
            stopped.flag = True
            return Turn("Deploying", 0.0)

        def knows(self, namespace: str, name: str, version: str | None) -> bool:
            return False

        def forget(self, namespace: str, name: str) -> None:
            calls.append(("forget", adopted(meta)))

    runtime = SimpleNamespace(wakers={}, reconciler=Reconciler())

    async def scenario() -> None:
        def kopf_writes() -> None:
            meta["finalizers"] = [FINALIZER]
            runtime.wakers["u1"].set()

        if finalizer_after is not None:
            asyncio.get_running_loop().call_later(finalizer_after, kopf_writes)
        daemon = cast(Callable[..., Awaitable[None]], drive)  # Kopf types the decorated function as its DaemonFn
        await daemon(
            stopped=cast(kopf.DaemonStopped, stopped),
            namespace="trading",
            name="release",
            uid="u1",
            meta=cast(kopf.Meta, meta),
            body=cast(kopf.Body, body),
            memo=SimpleNamespace(runtime=runtime),
        )

    asyncio.run(scenario())
    return calls


def test_a_new_rollouts_first_reads_go_out_before_kopf_s_finalizer_and_its_first_turn_after() -> None:
    calls = _drive_once({"name": "release", "namespace": "trading"}, finalizer_after=0.05)
    assert calls == [("read ahead", False), ("turn", True), ("forget", True)]


def test_a_rollout_kopf_already_adopted_reads_nothing_ahead() -> None:
    """After a restart, or any later start of its daemon: its first turn comes at once and reads for itself."""
    calls = _drive_once({"name": "release", "namespace": "trading", "finalizers": [FINALIZER]}, finalizer_after=None)
    assert calls == [("turn", True), ("forget", True)]


def test_cel_pythons_parser_is_built_at_startup_on_a_thread_not_in_the_first_rollouts_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built on first use, it held the event loop (every rollout's turns and Kopf's watches) for 0.15-0.3 s."""
    from torghut_operator.app import handlers, wiring  # noqa: PLC0415
    from torghut_operator.core import cel  # noqa: PLC0415

    built_on: list[int] = []
    monkeypatch.setattr(wiring, "build_runtime", lambda *a: SimpleNamespace())
    monkeypatch.setattr(cel, "warm_up", lambda: built_on.append(threading.get_ident()))
    monkeypatch.setattr(handlers, "_freeze_heap", lambda: None)  # this test process's heap is not start-up's

    async def scenario() -> int:
        await cast(Callable[..., Awaitable[None]], handlers.startup)(
            settings=kopf.OperatorSettings(), memo=SimpleNamespace()
        )
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert len(built_on) == 1
    assert built_on[0] != loop_thread


class _Node:
    other: _Node | None = None


def test_what_startup_built_is_out_of_the_collectors_reach_and_later_garbage_is_still_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full collection walked every object start-up had built and held the event loop for 45-73 ms mid-rollout
    (make bench); without them, 7-34 ms. A cycle that becomes garbage after start-up is still collected."""
    from torghut_operator.app import handlers, wiring  # noqa: PLC0415
    from torghut_operator.core import cel  # noqa: PLC0415

    built = SimpleNamespace(clients=[object()])  # stands for what start-up builds
    monkeypatch.setattr(wiring, "build_runtime", lambda *a: built)
    monkeypatch.setattr(cel, "warm_up", lambda: None)
    try:

        async def start() -> None:
            await cast(Callable[..., Awaitable[None]], handlers.startup)(
                settings=kopf.OperatorSettings(), memo=SimpleNamespace()
            )

        asyncio.run(start())
        assert gc.get_freeze_count() > 0
        tracked = {id(obj) for obj in gc.get_objects()}
        assert id(built) not in tracked, "a full collection would walk it"
        assert id(built.clients) not in tracked, "a full collection would walk it"
        first, second = _Node(), _Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        del first, second
        gc.collect()
        assert gone() is None, "garbage made after start-up is collected"
    finally:
        gc.unfreeze()


def test_the_loop_lag_sampler_runs_from_startup_to_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    from torghut_operator.app import handlers, wiring  # noqa: PLC0415
    from torghut_operator.core import cel  # noqa: PLC0415

    monkeypatch.setattr(wiring, "build_runtime", lambda *a: SimpleNamespace(api=None))
    monkeypatch.setattr(cel, "warm_up", lambda: None)
    monkeypatch.setattr(handlers, "_freeze_heap", lambda: None)

    async def scenario() -> tuple[bool, bool]:
        memo = SimpleNamespace()
        await cast(Callable[..., Awaitable[None]], handlers.startup)(settings=kopf.OperatorSettings(), memo=memo)
        sampler: asyncio.Task[None] = memo.loop_lag
        running = not sampler.done()
        await cast(Callable[..., Awaitable[None]], handlers.cleanup)(memo=memo)
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        return running, sampler.cancelled()

    assert asyncio.run(scenario()) == (True, True)


def test_the_daemon_sleeps_through_the_late_echo_of_its_own_write_and_wakes_for_news() -> None:
    async def idle(version: str, seconds: float) -> float:
        wake = Waker()
        asyncio.get_running_loop().call_later(0.02, wake.set, version)
        started = time.monotonic()
        await _idle(wake, seconds, lambda v: v == "5")  # 5: the version its own turn wrote
        return time.monotonic() - started

    assert 0.19 <= asyncio.run(idle("5", 0.2)) < 2.0, "the echo did not cost a turn"
    assert asyncio.run(idle("6", 5.0)) < 2.0, "someone else's change did, at once"

"""Thin Kopf handlers: one daemon per TorghutRollout drives it; watch events only wake that daemon.

A single writer per object (its daemon) means no two turns of the same rollout ever overlap. Watches on the
rollouts, their Jobs and their targets wake the daemon at once, so a stage advances as soon as its evidence is
observable; the daemon's own wait is the timer that polls gates and deadlines. Importing this module registers
handlers and touches no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from pydantic import ValidationError

from torghut_operator.app import kopf_fixes
from torghut_operator.app.runtime import Runtime, Waker
from torghut_operator.app.settings import OperatorConfig, adopted, report_refresh_interval, route_interval
from torghut_operator.core import cel
from torghut_operator.core.api.spec import GROUP, PLURAL, VERSION, TorghutRolloutSpec, target_key
from torghut_operator.core.api.status import Phase
from torghut_operator.core.manifests import MANAGED_BY
from torghut_operator.core.route_stats import RouteStats
from torghut_operator.shell import metrics
from torghut_operator.shell.reconciler import describe_error, is_transient

log = logging.getLogger(__name__)
kopf_fixes.serve_listed_namespaces()
TURN_TIMEOUT = 180.0
"""The longest one reconcile turn may take (a SQL migration file may take a while)."""
ADOPTION_SECONDS = 5.0
"""The longest a new rollout's first turn waits for Kopf's finalizer."""
IDLE_SECONDS = 30.0
"""The longest a daemon sleeps without being woken; a safety net under the watches."""
ROUTINE_HANDLERS = (
    "rollout_changed",
    "job_changed",
    "deployment_changed",
    "knative_service_changed",
    "route_visibility",
    "refresh_report",
)
"""The watch handlers and timers that run on every event or every interval: Kopf's line for each success is not
logged (app.quiet) unless --verbose."""
SETTLED = frozenset({p.value for p in Phase if p.terminal} | {Phase.PAUSED.value})
"""Phases only a verb or a spec change moves (the planner's ``_idle``): a rollout in one is not woken by changes of
its target or Job (``Waker.nudge``), after Succeeded the old ReplicaSet's scale-down alone cost about five turns
per rollout (``make bench``)."""


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


@kopf.on.startup()
async def startup(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    from torghut_operator.app.wiring import build_runtime  # noqa: PLC0415 (wiring imports clients; keep import cheap)

    config = OperatorConfig.from_env()
    config.apply(settings)
    # Every turn runs its blocking calls in threads; the default pool (cores + 4) would make rollouts queue.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=config.worker_threads))
    memo.runtime = build_runtime(config, tuple(getattr(memo, "namespace_patterns", ())))
    # cel-python builds its parser on first use: here, on a thread, not inside the first rollout's turn, where it
    # held the event loop (every rollout's turns and Kopf's watches) for 0.15-0.3 s.
    await asyncio.to_thread(cel.warm_up)
    _freeze_heap()
    memo.loop_lag = asyncio.create_task(metrics.sample_loop_lag(), name="event loop lag")


def _freeze_heap() -> None:
    """Move what start-up built (modules, classes, clients, the CEL parser: ~94,000 objects) out of the cyclic
    collector's reach. A full collection walks every object it tracks: with those it held the event loop for
    45-73 ms in the middle of rollouts (``make bench``, peer-shaped, 50 at once), the longest single pause a stage
    advance could meet; without them it walks 10,000-31,000 objects, 7-34 ms (median 14 ms, three runs). What is
    frozen lives as long as the process anyway; what is allocated later is collected as before."""
    gc.collect()
    gc.freeze()


@kopf.on.login()
def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Kopf's watches and the operator's own API calls log in the same way (``adapters.kubeapi.credentials``);
    Kopf calls this again when the API server answers 401 (a rotated token)."""
    from torghut_operator.adapters.kubeapi import credentials  # noqa: PLC0415 (keep import cheap)

    return credentials(settings)


@kopf.on.cleanup()
async def cleanup(*, memo: Any, **_: Any) -> None:
    sampler: asyncio.Task[None] | None = getattr(memo, "loop_lag", None)
    if sampler is not None:
        sampler.cancel()
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None and runtime.api is not None:
        await runtime.api.close()


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def drive(
    *,
    stopped: kopf.DaemonStopped,
    namespace: str | None,
    name: str,
    uid: str,
    meta: kopf.Meta,
    body: kopf.Body,
    memo: Any,
    **_: Any,
) -> None:
    assert namespace is not None  # the resource is namespaced
    runtime = _runtime(memo)
    metrics.watching(namespace, name)
    wake = runtime.wakers.setdefault(uid, Waker())
    known = lambda version: runtime.reconciler.knows(namespace, name, version)  # noqa: E731
    backoff = 1.0
    # A new rollout's first reads go out while Kopf's finalizer is on its way (see Reconciler.read_ahead).
    ahead = None if adopted(meta) else asyncio.create_task(runtime.reconciler.read_ahead(namespace, name, body))
    try:
        await _adoption(meta, wake)
        if ahead is not None:  # under the same bound; past it, the turn reads for itself
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ahead, ADOPTION_SECONDS)
        while not stopped:
            wake.clear()
            wake.settle(False)
            try:
                # A turn that hangs (a library ignoring its timeout) is abandoned, never waited on forever:
                # the next turn starts again from the persisted status.
                # ``body`` is Kopf's live view: the rollout as the watch last delivered it.
                turn = await asyncio.wait_for(runtime.reconciler.reconcile(namespace, name, body), TURN_TIMEOUT)
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 (the next turn starts again from the persisted status)
                backoff = min(backoff * 2, IDLE_SECONDS)
                if is_transient(exc):
                    log.warning(
                        "TorghutRollout %s/%s: turn failed, retrying in %.0fs: %s", namespace, name, backoff, exc
                    )
                else:
                    log.error("TorghutRollout %s/%s: %s", namespace, name, describe_error(exc))
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(runtime.reconciler.report_stuck(namespace, name, exc), TURN_TIMEOUT)
                await _backoff(wake, meta, backoff, known)
                continue
            if turn is None:  # deleted: nothing of it may stay exported
                metrics.forget(namespace, name)
                metrics.forget_route(uid)
                return
            delay = IDLE_SECONDS if turn.requeue_after is None else min(turn.requeue_after, IDLE_SECONDS)
            wake.settle(turn.phase in SETTLED)
            if delay > 0:
                await _idle(wake, delay, known)
    finally:
        if ahead is not None:
            ahead.cancel()
        runtime.wakers.pop(uid, None)
        runtime.reconciler.forget(namespace, name)


async def _adoption(meta: kopf.Meta, wake: Waker, seconds: float = ADOPTION_SECONDS) -> None:
    """A new rollout's first turn waits (at most ``seconds``) for Kopf's own first write, which comes at once:
    a status write racing it fails its precondition and costs a whole turn. ``meta`` is Kopf's live view; every
    change of the rollout sets ``wake``."""
    await _wait_until(wake, seconds, lambda: adopted(meta))


async def _backoff(wake: Waker, meta: kopf.Meta, seconds: float, known: Callable[[str | None], bool]) -> None:
    """Wait out a failed turn's backoff. Only a change of the rollout itself that its own turns did not make
    (``meta`` is Kopf's live view; ``known``: a version a turn read or wrote) ends it early: its target's changes
    (pods becoming ready, several a second) do not fix a refused request, and waking on each ran a failed turn
    for each."""
    version = meta.get("resourceVersion")

    def changed_by_others() -> bool:
        now = meta.get("resourceVersion")
        return now != version and not known(now)

    await _wait_until(wake, seconds, changed_by_others)


async def _idle(wake: Waker, seconds: float, known: Callable[[str], bool]) -> None:
    """Wait (at most ``seconds``) until something may have changed for the rollout: an echo of its own status write
    that arrived before the write's answer (known by now) does not end the wait."""
    await _wait_until(wake, seconds, lambda: wake.is_set() and wake.news(known))


async def _wait_until(wake: Waker, seconds: float, done: Callable[[], bool]) -> None:
    """Wait until ``done()`` holds (looked at first, then each time ``wake`` is set) or ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not done() and (left := deadline - loop.time()) > 0:
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=left)


def _deleting(meta: kopf.Meta, **_: Any) -> bool:
    """Deletion has been asked. As the deletion handler's filter it keeps Kopf from handling every other event of a
    rollout as a change with no handler (its state read from annotations, the whole body formatted for a debug
    line, ~3 % of the operator's CPU at 50 rollouts at once); the daemon keeps the finalizer on meanwhile."""
    return bool(meta.get("deletionTimestamp"))


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=3.0, when=_deleting)
async def finalize(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Deletion is a decision, not an accident: see Reconciler.finalize (spec.onDelete)."""
    assert namespace is not None
    done = await asyncio.wait_for(_runtime(memo).reconciler.finalize(namespace, name), TURN_TIMEOUT)
    if not done:
        raise kopf.TemporaryError("restoring the target before the rollout goes", delay=3.0)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def rollout_changed(
    *,
    type: str,
    body: kopf.Body,
    uid: str,
    name: str,
    namespace: str | None,
    memo: Any,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    version = body.metadata.get("resourceVersion")
    runtime.freshness.saw(uid, version)
    key = target_key(namespace or "", body.spec)
    if type == "DELETED":
        runtime.freshness.forget(uid)
        metrics.forget(namespace or "", name)
        metrics.forget_route(uid)
        before = runtime.targets.forget(uid)
        if before is not None and not runtime.targets.uids(before):
            runtime.target_copies.saw(before, None, driven=False)
    else:
        before = runtime.targets.saw(uid, key)
    # A version its own turn read or wrote (the echo of its status write) is no news to the rollout's daemon: waking
    # it would cost a turn, and after a failed turn its error report would end the backoff at once (a retry storm).
    echo = type != "DELETED" and runtime.reconciler.knows(namespace or "", name, version)
    if not echo:
        # a version not known yet may still be an echo whose write's answer is on its way: the daemon judges it
        runtime.wake(uid, None if type == "DELETED" else version)
    # Any change to one rollout may unblock another on the same target (or on the one it left); the rollout itself
    # was woken above, with the version that tells an echo from news.
    runtime.wake_target(key, sparing=uid)
    runtime.wake_target(before, sparing=uid)


def _has_database(spec: kopf.Spec, **_: Any) -> bool:
    """The rollout names a database. As the timers' filter: a rollout without one (a peer-shaped canary, an HTTP
    check only) gets no route or report timer at all (Kopf spawns a timer only while its filter holds, and stops it
    when it no longer does), instead of two tasks that woke to parse its spec and find nothing to read."""
    return spec.get("database") is not None


@kopf.timer(GROUP, VERSION, PLURAL, interval=route_interval(), initial_delay=1.0, when=_has_database)
async def route_visibility(
    *, namespace: str | None, uid: str, spec: kopf.Spec, meta: kopf.Meta, memo: Any, **_: Any
) -> None:
    """Route null rate, unknown rate and fallback ratio of the rollout's target database, exported all the time
    (not only while it verifies), labelled namespace/target; gone with the last rollout watching the target."""
    runtime = _runtime(memo)
    if runtime.route_reader is None or namespace is None or meta.get("deletionTimestamp"):
        return
    try:
        parsed = TorghutRolloutSpec.model_validate(dict(spec))
    except ValidationError:
        return  # an invalid spec is reported by its daemon
    if parsed.database is None:
        return
    try:
        stats: RouteStats | None = await asyncio.to_thread(runtime.route_reader, parsed, namespace)
    except Exception as exc:  # noqa: BLE001 (fail closed: no rates rather than stale ones)
        log.warning("route statistics of %s/%s: %s", namespace, parsed.target.name, _secret_free(exc))
        stats = None
    metrics.observe_route(uid, namespace, parsed.target.name, stats)


@kopf.timer(GROUP, VERSION, PLURAL, interval=report_refresh_interval(), initial_delay=5.0, when=_has_database)
async def refresh_report(
    *, namespace: str | None, name: str, uid: str, status: kopf.Status, memo: Any, **_: Any
) -> None:
    """A finished run's evidence report is refreshed until it shows the first three lane runs after the deploy, for
    a bounded time (evidence.report.REFRESH_HOURS); the report says how many it saw."""
    runtime = _runtime(memo)
    phase = status.get("phase")
    key = (uid, str(status.get("specHash") or ""), int(status.get("attempt") or 0))
    if namespace is None or key in runtime.reports_done or phase not in {p.value for p in Phase if p.terminal}:
        return
    try:
        more = await runtime.reconciler.refresh_report(namespace, name)
    except Exception as exc:  # noqa: BLE001 (tried again at the next interval)
        log.warning("refreshing the evidence report of %s/%s: %s", namespace, name, _secret_free(exc))
        return
    if not more:
        runtime.reports_done.add(key)


def _secret_free(exc: Exception) -> str:
    """Our own errors (and a malformed answer's ValueError) are written secret-free; others by type only."""
    from torghut_operator.core.errors import OperatorError  # noqa: PLC0415 (keep import cheap)
    from torghut_operator.core.reading import ProviderError  # noqa: PLC0415

    return str(exc) if isinstance(exc, OperatorError | ProviderError | ValueError) else type(exc).__name__


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_BY)
async def job_changed(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "TorghutRollout":
            runtime.nudge(ref.get("uid", ""))


@kopf.on.event("apps", "v1", "deployments")
async def deployment_changed(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    _target_changed(_runtime(memo), (namespace or "", "Deployment", name), type, body)


@kopf.on.event("serving.knative.dev", "v1", "services")
async def knative_service_changed(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    _target_changed(_runtime(memo), (namespace or "", "Service", name), type, body)


def _target_changed(runtime: Runtime, key: tuple[str, str, str], type_: str, body: kopf.Body) -> None:
    """Keep the watch's copy of a target some rollout drives (turns read it instead of a GET where safe), then wake
    the rollouts driving it."""
    driven = bool(runtime.targets.uids(key))
    runtime.target_copies.saw(key, None if type_ == "DELETED" else dict(body), driven=driven)
    runtime.wake_target(key)


# A probe that fails answers at once (Kopf would otherwise retry it inside the liveness request, after its
# default 60 s backoff, e.g. when one listing of the rollouts fails); the next liveness request probes again.
@kopf.on.probe(id="watch-freshness", errors=kopf.ErrorsMode.PERMANENT)
async def watch_freshness(*, memo: Any, **_: Any) -> str:
    """Fails (and so fails the liveness endpoint) when the rollout watch stopped delivering changes."""
    runtime = _runtime(memo)
    stale = await runtime.freshness.stale_objects()
    if stale:
        raise kopf.PermanentError(f"watch stale: {len(stale)} TorghutRollout change(s) not delivered: {stale[:3]}")
    return "fresh"

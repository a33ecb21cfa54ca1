"""Which daemons a change wakes: the map of rollouts by target (`app.runtime.Targets`), kept from the rollout watch's
events. Not Kopf's index: a namespace that goes before its first listing has finished would hold back every handler
of a Kopf operator with an index for good (pinned below against Kopf itself)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import auth
from kopf._cogs.structs import credentials, references
from kopf._core.reactor import orchestration

from torghut_operator.app import handlers
from torghut_operator.app.runtime import Runtime, TargetKey, Targets, Waker

pytestmark = pytest.mark.unit

# Kopf types its decorated handlers as its callback protocols; the tests call them with what each one reads.
rollout_changed: Any = handlers.rollout_changed
deployment_changed: Any = handlers.deployment_changed
job_changed: Any = handlers.job_changed

KEYS = st.tuples(
    st.sampled_from(["trading", "research"]), st.sampled_from(["Deployment", "Service"]), st.sampled_from(["a", "b"])
)
OPS = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.none() | KEYS), max_size=30)


@given(OPS)
def test_the_map_names_exactly_the_rollouts_whose_last_event_named_that_target(
    ops: list[tuple[str, TargetKey | None]],
) -> None:
    targets, last = Targets(), dict[str, TargetKey]()
    for uid, key in ops:  # None: the rollout was deleted
        if key is None:
            assert targets.forget(uid) == last.pop(uid, None)
        else:
            before = last.get(uid)
            assert targets.saw(uid, key) == (before if before != key else None)
            last[uid] = key
    for key in {k for _, k in ops if k is not None}:
        assert targets.uids(key) == {uid for uid, k in last.items() if k == key}


def _runtime(*uids: str, known: frozenset[tuple[str, str]] = frozenset()) -> Runtime:
    """``known``: (rollout name, resourceVersion) pairs its own turns read or wrote."""
    freshness = SimpleNamespace(saw=lambda *_: None, forget=lambda *_: None)
    reconciler = SimpleNamespace(knows=lambda _namespace, name, version: (name, version) in known)
    runtime = Runtime(reconciler=cast(Any, reconciler), config=cast(Any, None), freshness=cast(Any, freshness))
    for uid in uids:
        runtime.wakers[uid] = Waker()
    return runtime


def _woken(runtime: Runtime) -> list[str]:
    woken = sorted(uid for uid, event in runtime.wakers.items() if event.is_set())
    for event in runtime.wakers.values():
        event.clear()
    return woken


def _rollout_event(runtime: Runtime, uid: str, target: str, type: str = "MODIFIED", version: str = "1") -> None:
    body = kopf.Body(
        cast(kopf.RawBody, {"metadata": {"uid": uid, "resourceVersion": version}, "spec": {"target": {"name": target}}})
    )
    memo = SimpleNamespace(runtime=runtime)
    asyncio.run(rollout_changed(type=type, body=body, uid=uid, name=uid, namespace="trading", memo=memo))


def _deployment_event(runtime: Runtime, name: str, type: str = "MODIFIED", generation: int = 1) -> None:
    body = kopf.Body(cast(kopf.RawBody, {"metadata": {"name": name, "namespace": "trading", "generation": generation}}))
    memo = SimpleNamespace(runtime=runtime)
    asyncio.run(deployment_changed(type=type, body=body, namespace="trading", name=name, memo=memo))


def test_a_target_event_wakes_exactly_the_daemons_driving_it() -> None:
    runtime = _runtime("u1", "u2", "u3")
    for uid, target in (("u1", "torghut"), ("u2", "torghut"), ("u3", "other")):
        _rollout_event(runtime, uid, target, type=cast(str, None))  # the first listing
    _woken(runtime)
    _deployment_event(runtime, "torghut")
    assert _woken(runtime) == ["u1", "u2"]
    _deployment_event(runtime, "nobody")
    assert _woken(runtime) == []


def test_a_rollout_that_changes_its_target_wakes_both_and_is_woken_by_the_new_one_only() -> None:
    runtime = _runtime("u1", "u2", "u3")
    _rollout_event(runtime, "u1", "torghut")
    _rollout_event(runtime, "u2", "torghut")
    _rollout_event(runtime, "u3", "other")
    _woken(runtime)
    _rollout_event(runtime, "u1", "other")  # u2 may have waited for u1: it is woken too
    assert _woken(runtime) == ["u1", "u2", "u3"]
    _deployment_event(runtime, "torghut")
    assert _woken(runtime) == ["u2"]
    _rollout_event(runtime, "u3", "other", type="DELETED")
    assert _woken(runtime) == ["u1", "u3"]
    _deployment_event(runtime, "other")
    assert _woken(runtime) == ["u1"]


def test_the_echo_of_a_rollouts_own_write_wakes_its_peers_but_not_itself() -> None:
    """A failed turn's error report must not end its own backoff (CI once saw 195 turns in 5 s this way), and a
    status write must not cost its rollout a second, idle turn; the peers on its target may be unblocked by it."""
    runtime = _runtime("u1", "u2", "u3", known=frozenset({("u1", "7")}))
    for uid, target in (("u1", "torghut"), ("u2", "torghut"), ("u3", "other")):
        _rollout_event(runtime, uid, target, type=cast(str, None))
    _woken(runtime)
    _rollout_event(runtime, "u1", "torghut", version="7")  # u1's own write
    assert _woken(runtime) == ["u2"]
    _rollout_event(runtime, "u1", "torghut", version="8")  # someone else's change
    assert _woken(runtime) == ["u1", "u2"]
    _rollout_event(runtime, "u1", "torghut", type="DELETED", version="7")  # gone: always news
    assert _woken(runtime) == ["u1", "u2"]


def test_the_watch_keeps_a_copy_of_exactly_the_targets_rollouts_drive() -> None:
    """Turns read a target from the watch's copy where that is safe; the operator keeps no copy of the cluster's
    other Deployments, drops a deleted one, and drops a target's copy when its last rollout goes."""
    runtime = _runtime("u1", "u2")
    _rollout_event(runtime, "u1", "torghut")
    _rollout_event(runtime, "u2", "torghut")
    _deployment_event(runtime, "torghut", generation=3)
    _deployment_event(runtime, "nobody")
    copy = runtime.target_copies.get(("trading", "Deployment", "torghut"))
    assert copy is not None
    assert copy["metadata"]["generation"] == 3
    assert runtime.target_copies.get(("trading", "Deployment", "nobody")) is None
    _deployment_event(runtime, "torghut", generation=4)
    copy = runtime.target_copies.get(("trading", "Deployment", "torghut"))
    assert copy is not None
    assert copy["metadata"]["generation"] == 4
    _rollout_event(runtime, "u1", "torghut", type="DELETED")
    assert runtime.target_copies.get(("trading", "Deployment", "torghut")) is not None, "u2 still drives it"
    _rollout_event(runtime, "u2", "torghut", type="DELETED")
    assert runtime.target_copies.get(("trading", "Deployment", "torghut")) is None
    _rollout_event(runtime, "u1", "torghut")
    _deployment_event(runtime, "torghut", generation=5)
    _deployment_event(runtime, "torghut", type="DELETED", generation=5)
    assert runtime.target_copies.get(("trading", "Deployment", "torghut")) is None


def test_the_operator_registers_no_kopf_index() -> None:
    import torghut_operator.app.handlers  # noqa: F401, PLC0415 (registers the handlers)

    assert not list(kopf.get_default_registry()._indexing.get_all_handlers()), (
        "a Kopf index holds back every handler until every watched namespace has been listed (see the next test)"
    )


def test_kopf_holds_back_an_indexed_operator_for_good_when_a_namespace_goes_before_its_first_listing() -> None:
    """Pinned against Kopf (1.45.2) itself: if this fails, Kopf fixed it and an index is safe again."""

    async def scenario() -> bool:
        auth.vault_var.set(credentials.Vault())  # no credentials yet: the first listing waits (a slow listing)
        paused = aiotoggles.ToggleSet(any)
        ensemble = orchestration.Ensemble(
            operator_indexed=aiotoggles.ToggleSet(all),
            operator_paused=paused,
            peering_missing=await paused.make_toggle(name="peering"),
        )
        rollouts = references.Resource("torghut.proompteng.ai", "v1alpha1", "torghutrollouts", namespaced=True)

        async def processor(**_: Any) -> None:
            return None

        await orchestration.spawn_missing_watchers(
            processor=processor,
            settings=kopf.OperatorSettings(),
            indexed_resources={rollouts},
            watched_resources={rollouts},
            watched_namespaces={references.NamespaceName("e2e-going")},
            ensemble=ensemble,
        )
        # The namespace is deleted before its watcher could list it: Kopf stops the watcher...
        await orchestration.terminate_redundancies(
            remaining_resources={rollouts}, remaining_namespaces=set(), ensemble=ensemble
        )
        assert not ensemble.watcher_tasks
        # ... and the operator stays "not indexed": every object's handlers wait for it.
        return ensemble.operator_indexed.is_on()

    assert asyncio.run(scenario()) is False


def test_a_failed_turns_backoff_ends_early_only_for_a_change_of_the_rollout_nobody_of_its_own_made() -> None:
    """Target changes (pods becoming ready, several a second) and the rollout's own writes wake the daemon, but
    a failed turn's backoff goes on; a change someone else made to the rollout ends it (CI once saw five failed
    turns in a second, one per Deployment status change)."""
    backoff: Any = handlers._backoff

    async def scenario(versions: list[str], known: set[str]) -> float:
        wake, meta = asyncio.Event(), {"resourceVersion": "1"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(backoff(wake, meta, 1.0, lambda v: v in known))
        for version in versions:
            await asyncio.sleep(0)
            meta["resourceVersion"] = version
            wake.set()
        await asyncio.wait_for(waiting, 5)
        return loop.time() - started

    assert asyncio.run(scenario(["1", "1", "1"], set())) >= 1.0  # target wakes: the rollout did not change
    assert asyncio.run(scenario(["2", "3"], {"2", "3"})) >= 1.0  # its own writes' echoes
    assert asyncio.run(scenario(["2", "4"], {"2"})) < 1.0  # someone else's change


def test_an_echo_that_arrives_before_its_writes_answer_is_no_news_once_the_answer_is_in() -> None:
    """The watch often delivers a status write's echo before the write's answer reaches the turn (make bench: about
    one per rollout): its version is judged when the daemon looks, after the turn, not when the event arrives."""
    runtime = _runtime("u1", "u2")
    for uid in ("u1", "u2"):
        _rollout_event(runtime, uid, "torghut", type=cast(str, None))
    _woken(runtime)
    _rollout_event(runtime, "u1", "torghut", version="9")  # not known yet: the write's answer is on its way
    u1, u2 = runtime.wakers["u1"], runtime.wakers["u2"]
    assert u1.is_set()
    assert not u1.news(lambda version: version == "9"), "the turn knew 9 by the time the daemon looked"
    assert u1.news(lambda version: False), "someone else's change is news"
    assert u2.news(lambda version: version == "9"), "a peer on the same target may be unblocked by it"


def test_a_settled_rollout_is_woken_by_its_own_changes_only() -> None:
    """Succeeded, Failed, RolledBack, Aborted and Paused move only on a verb or a spec change (changes of the rollout
    itself); its target's changes (the old ReplicaSet scaling down) and its Job's no longer cost it turns."""
    runtime = _runtime("u1")
    _rollout_event(runtime, "u1", "torghut", type=cast(str, None))
    _woken(runtime)
    runtime.wakers["u1"].settle(True)
    _deployment_event(runtime, "torghut")
    job = {"metadata": {"ownerReferences": [{"kind": "TorghutRollout", "uid": "u1"}]}}
    asyncio.run(job_changed(body=kopf.Body(cast(kopf.RawBody, job)), memo=SimpleNamespace(runtime=runtime)))
    assert _woken(runtime) == []
    _rollout_event(runtime, "u1", "torghut", version="12")  # a verb or a spec change
    assert _woken(runtime) == ["u1"]
    runtime.wakers["u1"].settle(False)  # its next turn started a new run
    _deployment_event(runtime, "torghut")
    assert _woken(runtime) == ["u1"]


def test_settling_drops_target_changes_seen_during_the_turn_but_never_a_change_of_the_rollout() -> None:
    nudged = Waker()
    nudged.nudge()
    nudged.settle(True)
    assert not nudged.is_set()
    both = Waker()
    both.nudge()
    both.set("5")
    both.settle(True)
    assert both.is_set()
    assert both.news(lambda version: False)
    assert not both.news(lambda version: version == "5")
    gone = Waker()
    gone.set(None)  # deleted
    gone.settle(True)
    assert gone.news(lambda version: True)

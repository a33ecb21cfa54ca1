"""Turns read the rollout and its target from the operator's own watch instead of GETs, but only where that copy is
provably no older than what the operator knows: a stale copy must never be mistaken for the present (a target copy
from before the operator's own image patch would read as drift while deploying, or as "restored" while rolling
back). Fakes of the ports; the watch is a dict the test delivers to, late or not at all."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from tests.unit.test_reconcile_ports import NEW, OLD, FakeGates, FakeKube, rollout
from torghut_operator.core.api.spec import Target
from torghut_operator.shell.reconciler import Reconciler

pytestmark = pytest.mark.unit

KEY = ("trading", "Deployment", "torghut")


def target(image: str, generation: int, *, observed: int | None = None, failed: bool = False) -> dict[str, Any]:
    """A Deployment at ``generation`` whose controller observed ``observed`` (default: all of it, rolled out)."""
    seen = generation if observed is None else observed
    conditions = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}] if failed else []
    return {
        "metadata": {"name": "torghut", "namespace": "trading", "generation": generation},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "torghut", "image": image}]}}},
        "status": {
            "observedGeneration": seen,
            "replicas": 1,
            "updatedReplicas": 1 if seen == generation else 0,
            "availableReplicas": 1,
            "conditions": conditions,
        },
    }


class WatchedKube(FakeKube):
    """FakeKube whose target's generation moves with every image patch, counting GETs."""

    def __init__(self, body: dict[str, Any], start: dict[str, Any]) -> None:
        super().__init__(body, {"torghut": start})
        self.rollout_gets = 0

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.rollout_gets += 1
        return await super().get_rollout(namespace, name)

    async def set_target_image(
        self, namespace: str, target_: Target, image: str, current: Mapping[str, Any] | None = None
    ) -> None:
        self.images.append((target_.name, image))
        generation = self.targets[target_.name]["metadata"]["generation"] + 1
        self.targets[target_.name] = target(image, generation, observed=generation - 1)


class Watch:
    """What the operator's watch delivered so far: the target copies, and the rollout's live copy."""

    def __init__(self) -> None:
        self.targets: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __call__(self, key: tuple[str, str, str]) -> Mapping[str, Any] | None:
        return self.targets.get(key)


def _turn(reconciler: Reconciler, live: dict[str, Any] | None = None) -> None:
    asyncio.run(reconciler.reconcile("trading", "release", copy.deepcopy(live) if live is not None else None))


def _shell(kube: WatchedKube, watch: Watch) -> Reconciler:
    return Reconciler(kube, FakeGates(), lambda *a: None, copies=watch)


def test_the_rollout_is_read_from_the_watch_only_at_the_version_the_operator_last_read_or_wrote() -> None:
    kube = WatchedKube(rollout(), target(OLD, 1))
    reconciler = _shell(kube, Watch())
    delivered = copy.deepcopy(kube.rollout)
    _turn(reconciler, delivered)  # the daemon's first turn: the copy just delivered (Pending -> Deploying, written)
    assert kube.rollout_gets == 0
    assert kube.rollout["status"]["phase"] == "Deploying"
    _turn(reconciler, delivered)  # the echo of that write is not delivered yet: the copy is older, a GET
    assert kube.rollout_gets == 1
    _turn(reconciler, copy.deepcopy(kube.rollout))  # the watch caught up with the newest version it knows
    assert kube.rollout_gets == 1


def test_nothing_changes_on_a_copy_that_no_write_of_the_turn_proved_current() -> None:
    """Rolling back, someone put the new image back: the turn would patch the old one again without writing its
    status. On a copy (a daemon's first turn) it reads the rollout first, then acts."""
    kube = WatchedKube(rollout(), target(OLD, 1))
    reconciler = _shell(kube, Watch())
    _turn(reconciler)  # Deploying, NEW patched
    kube.targets["torghut"] = target(NEW, 2, failed=True)
    _turn(reconciler)  # RollingBack, OLD patched
    while kube.rollout["status"]["phase"] == "RollingBack" and kube.images[-1] != ("torghut", OLD):
        _turn(reconciler)
    assert kube.rollout["status"]["phase"] == "RollingBack"
    kube.targets["torghut"] = target(NEW, 4, observed=3)  # someone put NEW back
    restarted = _shell(kube, Watch())  # a new daemon (or operator): its first turn reads the watch's copy
    images, gets = len(kube.images), kube.rollout_gets
    result = asyncio.run(restarted.reconcile("trading", "release", copy.deepcopy(kube.rollout)))
    assert result is not None
    assert result.requeue_after == 0.0
    assert len(kube.images) == images, "no patch on an unproven copy"
    assert kube.rollout_gets == gets
    _turn(restarted, kube.rollout)
    assert kube.rollout_gets == gets + 1, "read first"
    assert kube.images[-1] == ("torghut", OLD), "then acted"


def test_a_target_write_starts_from_the_turns_own_read_of_the_target() -> None:
    """The image patch of a new rollout's first turn starts from the target the turn just read (no second GET);
    its resourceVersion precondition would turn a stale base into a conflict and a fresh read."""
    kube = WatchedKube(rollout(), target(OLD, 1))
    bases: list[Mapping[str, Any] | None] = []
    original = kube.set_target_image

    async def recording(namespace: str, target_: Target, image: str, current: Mapping[str, Any] | None = None) -> None:
        bases.append(current)
        await original(namespace, target_, image, current)

    kube.set_target_image = recording  # type: ignore[method-assign]
    _turn(_shell(kube, Watch()))
    assert kube.targets_read == ["torghut"]
    assert len(bases) == 1
    assert bases[0] is not None
    assert bases[0]["spec"]["template"]["spec"]["containers"][0]["image"] == OLD


def test_a_change_someone_else_made_is_never_lost_to_a_copy() -> None:
    """The copy is the newest version the operator knows, but someone changed the rollout since and the watch has not
    delivered it: the status write fails its precondition, nothing acts on it, and the next turn GETs."""
    kube = WatchedKube(rollout(), target(OLD, 1))
    reconciler = _shell(kube, Watch())
    _turn(reconciler)
    known = copy.deepcopy(kube.rollout)
    kube.rollout["metadata"]["resourceVersion"] = "99"  # someone else's change, not delivered
    kube.targets["torghut"] = target(NEW, 2)  # rolled out: the turn would write Verifying
    writes = len(kube.status_writes)
    _turn(reconciler, known)
    assert len(kube.status_writes) == writes, "a write on the copy's version must fail its precondition"
    gets = kube.rollout_gets
    _turn(reconciler, known)
    assert kube.rollout_gets == gets + 1, "after a lost write the next turn reads the rollout fresh"
    assert kube.rollout["status"]["phase"] == "Verifying"


def test_a_new_rollouts_first_look_at_its_target_is_fresh_whatever_the_watch_holds() -> None:
    """The restore point (the image to put back) comes from that look: never from a copy."""
    kube = WatchedKube(rollout(), target("registry/torghut@sha256:current", 5))
    watch = Watch()
    watch.targets[KEY] = target(OLD, 4)  # an older copy, not delivered past
    _turn(_shell(kube, watch))
    assert kube.targets_read == ["torghut"]
    assert kube.rollout["status"]["restore"]["image"] == "registry/torghut@sha256:current"


def test_a_copy_from_before_the_operators_own_patch_is_never_read_as_drift() -> None:
    kube = WatchedKube(rollout(), target(OLD, 1))
    watch = Watch()
    reconciler = _shell(kube, watch)
    _turn(reconciler)  # Pending -> Deploying, NEW patched (generation 2, not yet observed)
    assert kube.images == [("torghut", NEW)]
    watch.targets[KEY] = target(OLD, 1)  # the watch has not delivered the patch yet
    kube.targets_read.clear()
    _turn(reconciler, kube.rollout)
    assert kube.targets_read == ["torghut"], "after its own write the operator GETs the target"
    assert kube.rollout["status"]["phase"] == "Deploying"
    _turn(reconciler, kube.rollout)
    assert kube.targets_read == ["torghut", "torghut"], "a copy below the generation the GET saw is not read"
    assert kube.rollout["status"]["phase"] == "Deploying", "OLD in a stale copy is no drift"
    watch.targets[KEY] = target(NEW, 2)  # delivered: rolled out
    kube.targets["torghut"] = target(NEW, 2)
    reads = len(kube.targets_read)
    _turn(reconciler, kube.rollout)
    assert kube.rollout["status"]["phase"] == "Verifying"
    assert kube.targets_read[reads:] == [], "the copy, at the generation the GET saw, decided Verifying"
    _turn(reconciler, kube.rollout)  # the measuring turn
    assert kube.rollout["status"]["checks"][0]["measurements"], "it measured"
    assert kube.targets_read[reads:] == ["torghut"], "the look after measuring is a GET (drift is never evidence)"


def test_a_copy_from_before_the_deploy_never_ends_a_rollback() -> None:
    """Rolling back: the operator patched OLD back (generation 3, not yet rolled out). A copy of the target from
    before the deploy shows OLD rolled out: read as the present it would end the rollback on a Deployment still
    rolling."""
    kube = WatchedKube(rollout(), target(OLD, 1))
    watch = Watch()
    reconciler = _shell(kube, watch)
    _turn(reconciler)  # Deploying, NEW patched: generation 2
    kube.targets["torghut"] = target(NEW, 2, failed=True)  # its controller gives up
    _turn(reconciler, kube.rollout)
    assert kube.rollout["status"]["phase"] == "RollingBack"
    if kube.images[-1] != ("torghut", OLD):
        _turn(reconciler, kube.rollout)
    assert kube.images[-1] == ("torghut", OLD)
    assert kube.targets["torghut"]["metadata"]["generation"] == 3
    watch.targets[KEY] = target(OLD, 1)  # the copy from before the deploy
    for _ in range(2):
        _turn(reconciler, kube.rollout)
        assert kube.rollout["status"]["phase"] == "RollingBack"
    kube.targets["torghut"] = target(OLD, 3)  # now it is rolled out
    _turn(reconciler, kube.rollout)
    assert kube.rollout["status"]["phase"] == "RolledBack"


def test_without_a_watch_every_read_is_a_get() -> None:
    kube = WatchedKube(rollout(), target(OLD, 1))
    reconciler = Reconciler(kube, FakeGates(), lambda *a: None)
    for _ in range(3):
        _turn(reconciler)
    assert kube.rollout_gets == 3
    assert len(kube.targets_read) >= 3

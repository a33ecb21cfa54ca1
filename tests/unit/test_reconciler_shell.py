"""The reconcile shell's failure paths against in-memory fakes: a turn that fails for good says so in status, and
deleting a rollout restores (or knowingly leaves) what it changed."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import urllib3

from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.core.api.spec import Target
from torghut_operator.core.errors import PermanentError, TemporaryError
from torghut_operator.core.timefmt import format_time
from torghut_operator.shell.ports import Gates
from torghut_operator.shell.reconciler import Reconciler, describe_error, is_transient

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OLD = "registry/torghut@sha256:old"
NEW = "registry/torghut@sha256:new"


def deployment(image: str, env: dict[str, str], *, available: bool = True) -> dict[str, Any]:
    ready = 1 if available else 0
    return {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "torghut", "image": image, "env": [{"name": k, "value": v} for k, v in env.items()]}
                    ]
                }
            },
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 1,
            "updatedReplicas": 1,
            "availableReplicas": ready,
            "readyReplicas": ready,
        },
    }


class FakeKube:
    def __init__(self, rollout: dict[str, Any], target: dict[str, Any]) -> None:
        self.rollout = rollout
        self.target = target
        self.status_patches: list[dict[str, Any]] = []
        self.image_patches: list[str] = []
        self.env_patches: list[dict[str, str | None]] = []

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.rollout)

    async def patch_rollout_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> str | None:
        self.status_patches.append(status)
        self.rollout["status"] = {**self.rollout.get("status", {}), **status}
        return "2"

    async def get_target(self, namespace: str, target: Target) -> dict[str, Any] | None:
        return copy.deepcopy(self.target)

    async def set_target_image(
        self, namespace: str, target: Target, image: str, current: Mapping[str, Any] | None = None
    ) -> None:
        self.image_patches.append(image)

    async def set_target_env(
        self, namespace: str, target: Target, env: dict[str, str | None], current: Mapping[str, Any] | None = None
    ) -> None:
        self.env_patches.append(env)


def rollout(status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "release",
            "namespace": "trading",
            "uid": "u1",
            "generation": 1,
            "resourceVersion": "1",
            "deletionTimestamp": format_time(NOW),
        },
        "spec": {
            "target": {"name": "torghut", "container": "torghut", "image": NEW},
            "verify": {"checks": [{"name": "h", "http": {"url": "http://x"}, "min": 1}]},
            **spec,
        },
        "status": status,
    }


def reconciler(kube: FakeKube, events: list[tuple[str, str, str]], *, at: datetime = NOW) -> Reconciler:
    def sink(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    return Reconciler(cast(KubeGateway, kube), cast(Gates, object()), sink, clock=lambda: at)


MID_VERIFY = {
    "phase": "Verifying",
    "image": NEW,
    "previousImage": OLD,
    "restore": {"image": OLD, "env": {"TRADING_MODE": "paper"}},
}


def test_deleting_a_rollout_mid_verification_restores_image_and_trading_env_before_it_goes() -> None:
    kube = FakeKube(rollout(MID_VERIFY), deployment(NEW, {"TRADING_MODE": "live"}))
    events: list[tuple[str, str, str]] = []
    done = asyncio.run(reconciler(kube, events).finalize("trading", "release"))
    assert not done
    assert kube.image_patches == [OLD]
    assert kube.env_patches == [{"TRADING_MODE": "paper"}]
    assert events[0][1] == "RestoringOnDelete"
    kube.target = deployment(OLD, {"TRADING_MODE": "paper"})
    assert asyncio.run(reconciler(kube, events).finalize("trading", "release"))
    assert events[-1][:2] == ("Normal", "RestoredOnDelete")


def test_a_restore_on_delete_that_misses_its_deadline_lets_go_with_a_warning() -> None:
    kube = FakeKube(rollout(MID_VERIFY), deployment(OLD, {"TRADING_MODE": "paper"}, available=False))
    events: list[tuple[str, str, str]] = []
    late = NOW + timedelta(minutes=11)  # deploy.progressDeadline defaults to 10m
    assert asyncio.run(reconciler(kube, events, at=late).finalize("trading", "release"))
    assert events[-1][:2] == ("Warning", "DeletedUnrestored")
    assert "could not restore the target" in events[-1][2]


def test_orphan_leaves_the_target_and_says_what_it_keeps() -> None:
    kube = FakeKube(rollout(MID_VERIFY, onDelete="Orphan"), deployment(NEW, {"TRADING_MODE": "live"}))
    events: list[tuple[str, str, str]] = []
    assert asyncio.run(reconciler(kube, events).finalize("trading", "release"))
    assert kube.image_patches == []
    assert kube.env_patches == []
    assert events == [
        (
            "Warning",
            "DeletedUnrestored",
            f"deleted with spec.onDelete Orphan: the target keeps image {NEW} (was {OLD}) and trading env changed "
            "by the rollout (was TRADING_MODE=paper)",
        )
    ]


@pytest.mark.parametrize("phase", ["Succeeded", "RolledBack"])
def test_a_finished_rollout_goes_without_touching_the_target(phase: str) -> None:
    kube = FakeKube(rollout({"phase": phase, "image": NEW}), deployment(NEW, {}))
    events: list[tuple[str, str, str]] = []
    assert asyncio.run(reconciler(kube, events).finalize("trading", "release"))
    assert (kube.image_patches, kube.env_patches, events) == ([], [], [])


def test_a_turn_that_fails_for_good_says_so_in_status_once() -> None:
    status = {"phase": "Verifying", "conditions": [{"type": "Verified", "status": "False", "reason": "Verifying"}]}
    kube = FakeKube(rollout(status), deployment(NEW, {}))
    events: list[tuple[str, str, str]] = []
    error = OverflowError("date value out of range")
    asyncio.run(reconciler(kube, events).report_stuck("trading", "release", error))
    asyncio.run(reconciler(kube, events).report_stuck("trading", "release", error))
    assert len(kube.status_patches) == 1
    ready = kube.status_patches[0]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "ReconcileError")
    assert ready["message"] == "reconcile failed: OverflowError: date value out of range"
    assert kube.rollout["status"]["phase"] == "Verifying"  # nothing else in status changes
    assert [c["type"] for c in kube.rollout["status"]["conditions"]] == ["Ready", "Verified"]
    assert events == [("Warning", "ReconcileError", "reconcile failed: OverflowError: date value out of range")]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TemporaryError("API server unreachable"), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (urllib3.exceptions.ProtocolError("reset"), True),
        (PermanentError("forbidden"), False),
        (OverflowError("date value out of range"), False),
        (KeyError("spec"), False),
    ],
)
def test_only_outages_are_retried_quietly(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_errors_in_status_never_carry_url_credentials() -> None:
    text = describe_error(ValueError("cannot reach postgresql://app:s3cret@db:5432/torghut"))
    assert "s3cret" not in text
    assert text == "ValueError: cannot reach postgresql://***@db:5432/torghut"

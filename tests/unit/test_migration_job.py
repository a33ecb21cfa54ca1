"""The migration Job as users run it: placed where they say (nodeSelector, tolerations), and when it fails its pod's
last log lines land in status (secrets removed) and in the failure message, so nobody needs the pod to know why."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_planner import make_spec, run, started
from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import Phase
from torghut_operator.core.manifests import migration_job
from torghut_operator.core.observations import JobState
from torghut_operator.core.text import redact_log, telling_log_line
from torghut_operator.shell.ports import Gates
from torghut_operator.shell.reconciler import Reconciler, _dump_status

pytestmark = pytest.mark.unit

LOG = "INFO  [alembic.runtime.migration] Running upgrade 0006 -> 0007\npsycopg.errors.UndefinedTable: executions\n"


def test_a_failed_job_puts_its_last_log_line_in_the_message_and_the_log_in_status() -> None:
    spec = make_spec()
    failed = JobState(name="j", exists=True, failed=True, reason="BackoffLimitExceeded", message="limit", logs=LOG)
    p = run(spec, started(spec, Phase.MIGRATING), job=failed)
    assert p.status.phase is Phase.FAILED
    assert "last error line: psycopg.errors.UndefinedTable: executions" in p.status.message
    assert p.status.migration is not None
    assert p.status.migration.job_logs == LOG


def test_the_error_line_is_quoted_even_when_a_stdout_line_landed_after_it() -> None:
    """stdout and stderr reach a container's log through two pipes: CI saw an error printed last to stderr sit
    above a line printed before it to stdout, and the message quoted the harmless line."""
    spec = make_spec()
    logs = "connecting to postgresql://app:***@db/torghut\nERROR: relation executions does not exist\nrunning upgrade\n"
    failed = JobState(name="j", exists=True, failed=True, reason="BackoffLimitExceeded", message="limit", logs=logs)
    p = run(spec, started(spec, Phase.MIGRATING), job=failed)
    assert "last error line: ERROR: relation executions does not exist" in p.status.message


def test_a_log_without_an_error_line_is_quoted_by_its_last_line() -> None:
    spec = make_spec()
    logs = "running upgrade 0006 -> 0007\nKilled\n"
    failed = JobState(name="j", exists=True, failed=True, reason="BackoffLimitExceeded", message="limit", logs=logs)
    p = run(spec, started(spec, Phase.MIGRATING), job=failed)
    assert "last log line: Killed" in p.status.message


@given(st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40), max_size=8))
def test_the_quoted_line_is_always_a_line_of_the_log(lines: list[str]) -> None:
    logs = "\n".join(lines)
    telling = telling_log_line(logs)
    stripped = [line.strip() for line in logs.splitlines() if line.strip()]
    if not stripped:
        assert telling is None
    else:
        assert telling is not None
        assert telling[1] in stripped
        assert telling[0] in {"last error line", "last log line"}


def test_a_failed_job_without_a_log_fails_as_before() -> None:
    spec = make_spec()
    failed = JobState(name="j", exists=True, failed=True, reason="DeadlineExceeded", message="too long")
    p = run(spec, started(spec, Phase.MIGRATING), job=failed)
    assert "line:" not in p.status.message
    assert p.status.migration is None or p.status.migration.job_logs is None


def test_the_job_lands_where_the_spec_places_it() -> None:
    spec = make_spec(
        migrate={
            "job": {
                "command": ["alembic", "upgrade", "heads"],
                "nodeSelector": {"torghut.proompteng.ai/node": "real"},
                "tolerations": [{"key": "torghut.proompteng.ai/node", "operator": "Exists", "effect": "NoSchedule"}],
            }
        }
    )
    pod = migration_job(spec, name="j", rollout="r", uid="u", namespace="n")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"torghut.proompteng.ai/node": "real"}
    assert pod["tolerations"] == [{"key": "torghut.proompteng.ai/node", "operator": "Exists", "effect": "NoSchedule"}]
    plain = migration_job(make_spec(), name="j", rollout="r", uid="u", namespace="n")["spec"]["template"]["spec"]
    assert "nodeSelector" not in plain
    assert "tolerations" not in plain


def test_placement_fields_at_their_defaults_keep_the_spec_hash() -> None:
    """An operator upgrade must not start every rollout over: empty nodeSelector/tolerations hash as before."""
    spec = make_spec()
    raw: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    raw["migrate"]["job"]["nodeSelector"] = {}
    raw["migrate"]["job"]["tolerations"] = []
    assert TorghutRolloutSpec.model_validate(raw).spec_hash() == spec.spec_hash()


def test_the_remembered_spec_hash_is_never_that_of_another_spec() -> None:
    """spec_hash() is computed once per parsed spec; a copy with changes hashes what it now holds."""
    spec = make_spec()
    first = spec.spec_hash()
    assert spec.spec_hash() == first
    moved = spec.model_copy(
        update={"target": spec.target.model_copy(update={"image": "registry/torghut@sha256:other"})}
    )
    raw: dict[str, Any] = moved.model_dump(mode="json", by_alias=True)
    assert moved.spec_hash() == TorghutRolloutSpec.model_validate(raw).spec_hash() != first
    assert spec.model_copy(update={"paused": True}).spec_hash() == first  # pausing is the same run
    assert spec.model_copy().spec_hash() == first


@pytest.mark.parametrize(
    ("line", "hidden", "kept"),
    [
        ("connecting to postgresql://torghut_app:s3cr3t@db:5432/torghut", "s3cr3t", "postgresql://torghut_app:***@db"),
        ("dsn: host=db user=app password=s3cr3t dbname=t", "s3cr3t", "password=***"),
        ("PGPASSWORD: 's3 cr3t'", "s3 cr3t", "PGPASSWORD: ***"),
        ("token=abc.def.ghi ok", "abc.def.ghi", "token=*** ok"),
    ],
)
def test_log_lines_lose_their_secrets(line: str, hidden: str, kept: str) -> None:
    out = redact_log(line)
    assert hidden not in out
    assert kept in out


@given(st.text(max_size=200), st.text(alphabet="abcdefghijklmnop0123456789", min_size=6, max_size=20))
def test_a_url_password_never_survives(prefix: str, password: str) -> None:
    out = redact_log(f"{prefix} postgres://app:{password}@db/t")
    assert f":{password}@" not in out


class _Kube:
    def __init__(self, rollout: dict[str, Any], job: dict[str, Any], logs: str | Exception) -> None:
        self.rollout = rollout
        self.job = job
        self.logs = logs
        self.log_reads = 0

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return self.rollout

    async def patch_rollout_status(self, namespace: str, name: str, status: dict[str, Any], rv: str) -> str:
        self.rollout["status"] = {**self.rollout.get("status", {}), **status}
        return "2"

    async def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.job

    async def get_target(self, namespace: str, target: object) -> None:
        return None  # read in every Migrating turn; a failed Job fails whatever the target

    async def job_logs(self, namespace: str, job: str) -> str:
        self.log_reads += 1
        if isinstance(self.logs, Exception):
            raise self.logs
        return self.logs


def _failed_migration(logs: str | Exception) -> _Kube:
    spec = make_spec()
    status = started(spec, Phase.MIGRATING)
    body = {
        "metadata": {"name": "release-42", "namespace": "t", "uid": "u", "generation": 3, "resourceVersion": "1"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": _dump_status(status),
    }
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    return _Kube(body, job, logs)


def _turn(kube: _Kube) -> dict[str, Any]:
    events: list[str] = []
    reconciler = Reconciler(cast(KubeGateway, kube), cast(Gates, object()), lambda *a: events.append(a[2]))
    asyncio.run(reconciler.reconcile("t", "release-42"))
    status: dict[str, Any] = kube.rollout["status"]
    return status


def test_the_shell_reads_the_log_of_a_failed_job_and_removes_secrets() -> None:
    kube = _failed_migration("connect postgresql://app:hunter2@db/t\nERROR: relation executions does not exist\n")
    status = _turn(kube)
    assert kube.log_reads == 1
    assert "hunter2" not in status["migration"]["jobLogs"]
    assert "ERROR: relation executions does not exist" in status["message"]


def test_a_log_that_cannot_be_read_is_said_and_the_failure_goes_on() -> None:
    kube = _failed_migration(RuntimeError("pods/log is forbidden"))
    status = _turn(kube)
    assert status["phase"] == "Failed"
    assert "the pod's log could not be read: RuntimeError: pods/log is forbidden" in status["migration"]["jobLogs"]

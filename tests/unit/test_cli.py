"""The kubectl plugin without a cluster: which verbs apply in which phase (and that the planner agrees), what a
user reads in `status`, `list` and `history`, and every way to fail that needs no API server - each one line on
stderr with an exit code, never a traceback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner, Result

from torghut_operator.cli import commands as cli
from torghut_operator.cli import session as cli_session
from torghut_operator.cli import views as cli_views
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.api.status import TERMINAL_PHASES, Phase, PromotionStatus, TorghutRolloutStatus
from torghut_operator.core.manifests import ACTION_ANNOTATION
from torghut_operator.core.observations import Observations
from torghut_operator.core.planner import plan
from torghut_operator.core.presets import effective_checks
from torghut_operator.core.timefmt import format_time
from torghut_operator.core.troubleshooting import markdown_table
from torghut_operator.core.verbs import VERBS, action_value, is_refusal, parse_action, verb_applies

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NAME = "release-42"
NAMESPACE = "trading"
SPEC: dict[str, Any] = {
    "target": {"name": "torghut", "container": "torghut", "image": "registry/torghut:v42"},
    "database": {"secretRef": {"name": "torghut-db-app", "key": "uri"}},
    "prometheus": {"url": "http://prometheus:9090"},
    "migrate": {"job": {"command": ["alembic", "upgrade", "heads"]}},
    "verify": {
        "count": 3,
        "checks": [
            {"name": "decisions-flowing", "prometheus": {"query": "sum(decisions)"}, "successCondition": "result > 0"},
            {"name": "error-rate", "prometheus": {"query": "sum(rate(errors[5m]))"}, "max": 0.01},
        ],
    },
    "promotion": {
        "steps": [
            {"name": "paper", "env": {"TRADING_MODE": "paper"}},
            {
                "name": "canary",
                "env": {"TRADING_MODE": "live", "LIVE_CAP": "0.10"},
                "requiredPromotion": {"mode": "live"},
                "requiresApproval": True,
            },
            {
                "name": "live",
                "env": {"TRADING_MODE": "live", "LIVE_CAP": "1"},
                "requiredPromotion": {"mode": "live"},
                "requiresApproval": True,
            },
        ]
    },
}
PARSED = TorghutRolloutSpec.model_validate(SPEC)
DIGEST_IMAGE = (
    "registry.ide-newton.ts.net/lab/torghut@sha256:884bec35f7d24ef34c51240e697aa996bc134385be9f6936aa170880fe2d601e"
)


def ago(minutes: float) -> str:
    return format_time(NOW - timedelta(minutes=minutes))


def rollout_object(status: dict[str, Any], *, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    body = spec if spec is not None else SPEC
    try:
        spec_hash = TorghutRolloutSpec.model_validate(body).spec_hash()
    except ValueError:
        spec_hash = "0123456789abcdef"
    return {
        "apiVersion": "torghut.proompteng.ai/v1alpha1",
        "kind": "TorghutRollout",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": "uid-1",
            "resourceVersion": "7",
            "creationTimestamp": ago(30),
            **meta,
        },
        "spec": body,
        "status": {"specHash": spec_hash, **status},
    }


AWAITING_CANARY: dict[str, Any] = {
    "phase": "Promoting",
    "stage": "promote:canary",
    "message": "step canary awaits approval: promote to apply it",
    "image": "registry/torghut:v42",
    "previousImage": "registry/torghut:v41",
    "attempt": 2,
    "startedAt": ago(30),
    "awaitingApproval": True,
    "promotion": {"step": 1, "stepName": "canary", "completed": ["paper"]},
    "checks": [
        {
            "name": "decisions-flowing",
            "stage": "promote:paper",
            "provider": "prometheus",
            "query": "sum(decisions)",
            "threshold": "success: result > 0",
            "phase": "Successful",
            "successful": 3,
            "message": "3/3 measurements successful; last: [value 412] > 0",
            "measurements": [
                {"phase": "Successful", "at": ago(5), "value": "400"},
                {"phase": "Successful", "at": ago(4), "value": "405"},
                {"phase": "Successful", "at": ago(3), "value": "412", "samples": 1200, "message": "412 > 0"},
            ],
        },
        {
            "name": "error-rate",
            "stage": "promote:paper",
            "provider": "prometheus",
            "query": "sum(rate(errors[5m]))",
            "threshold": "<= 0.01",
            "phase": "Inconclusive",
            "successful": 2,
            "inconclusive": 1,
            "approved": True,
            "message": "1 inconclusive measurement(s) (limit 0): empty vector: no data",
            "measurements": [{"phase": "Inconclusive", "at": ago(3), "message": "empty vector: no data"}],
        },
    ],
    "lastAction": {"verb": "promote", "at": ago(2), "result": "promoted: Inconclusive verdicts accepted"},
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "lastTransitionTime": ago(30),
            "reason": "AwaitingApproval",
            "message": "step canary awaits approval",
        },
        {"type": "Verified", "status": "True", "lastTransitionTime": ago(10), "reason": "ChecksPassed"},
    ],
}


def render(renderable: Any) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


# --- which verbs apply ------------------------------------------------------------------------------------------

RUNNING = [p for p in Phase if p not in TERMINAL_PHASES]


@pytest.mark.parametrize("phase", list(Phase))
def test_abort_applies_until_the_rollout_is_finished(phase: Phase) -> None:
    refusal = verb_applies("abort", TorghutRolloutStatus(phase=phase), subject=NAME)
    if phase.terminal:
        assert refusal == (
            f"nothing to abort: {NAME} is {phase.value} (abort applies while a rollout runs or is paused, "
            "not once it is Succeeded, Failed, RolledBack or Aborted)"
        )
    else:
        assert refusal is None


@pytest.mark.parametrize("phase", list(Phase))
def test_retry_applies_only_to_a_failed_rolled_back_or_aborted_rollout(phase: Phase) -> None:
    refusal = verb_applies("retry", TorghutRolloutStatus(phase=phase), subject=NAME)
    if phase in (Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED):
        assert refusal is None
    else:
        assert refusal == f"nothing to retry: {NAME} is {phase.value} (retry applies to Failed, RolledBack or Aborted)"


@pytest.mark.parametrize("phase", list(Phase))
def test_pause_applies_while_running_but_not_to_a_rollback(phase: Phase) -> None:
    refusal = verb_applies("pause", TorghutRolloutStatus(phase=phase, paused_by="verb"), subject=NAME)
    if phase.terminal:
        assert refusal is not None
        assert refusal.startswith("nothing to pause: release-42 is")
    elif phase is Phase.PAUSED:
        assert refusal == "already paused: release-42 is Paused (by the pause verb)"
    elif phase is Phase.ROLLING_BACK:
        assert refusal == "a rollback is not paused: it restores the previous image"
    else:
        assert refusal is None


@pytest.mark.parametrize("phase", list(Phase))
def test_resume_applies_only_to_a_rollout_paused_by_the_verb(phase: Phase) -> None:
    status = TorghutRolloutStatus(phase=phase)
    refusal = verb_applies("resume", status, subject=NAME)
    if phase is Phase.PAUSED:
        assert refusal is None
        assert verb_applies("resume", status, spec_paused=True) == "spec.paused is true: set it to false to resume"
    else:
        assert refusal == f"nothing to resume: {NAME} is {phase.value} (resume applies to a Paused rollout)"


@pytest.mark.parametrize("phase", list(Phase))
def test_promote_applies_only_when_something_awaits_approval(phase: Phase) -> None:
    assert verb_applies("promote", TorghutRolloutStatus(phase=phase, awaiting_approval=True)) is None
    refusal = verb_applies("promote", TorghutRolloutStatus(phase=phase), subject=NAME)
    assert refusal is not None
    assert refusal.startswith(f"nothing awaits approval: {NAME} is {phase.value} (promote accepts Inconclusive")


def test_an_unknown_verb_names_the_verbs() -> None:
    assert verb_applies("undo", TorghutRolloutStatus()) == (
        "unknown verb 'undo'; use one of abort, retry, promote, pause, resume"
    )


def _status_in(phase: Phase, *, awaiting: bool) -> TorghutRolloutStatus:
    extra: dict[str, Any] = {}
    if phase is Phase.PAUSED:
        extra = {"paused_from": Phase.VERIFYING, "paused_by": "verb"}
    if phase is Phase.PROMOTING:
        extra = {"promotion": PromotionStatus(step=1, step_name="canary", completed=["paper"])}
    return TorghutRolloutStatus(
        phase=phase,
        spec_hash=PARSED.spec_hash(),
        image="registry/torghut:v42",
        previous_image="registry/torghut:v41",
        started_at=format_time(NOW),
        phase_started_at=format_time(NOW),
        awaiting_approval=awaiting,
        **extra,
    )


@pytest.mark.parametrize("spec_paused", [False, True])
@pytest.mark.parametrize("awaiting", [False, True])
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("verb", [*VERBS, "undo"])
def test_the_plugin_refuses_exactly_what_the_planner_refuses(
    verb: str, phase: Phase, awaiting: bool, spec_paused: bool
) -> None:
    """The plugin's client-side check and the operator's planner must never disagree."""
    spec = PARSED.model_copy(update={"paused": spec_paused})
    status = _status_in(phase, awaiting=awaiting)
    refusal = verb_applies(verb, status, spec_paused=spec_paused)
    result = plan(spec, effective_checks(spec), status, Observations(now=NOW, verb=verb), name=NAME)
    action = result.status.last_action
    assert action is not None
    assert action.verb == verb
    assert is_refusal(action.result) == (refusal is not None), (action.result, refusal)
    if refusal is not None:
        assert action.result.split(":")[0] == refusal.split(":")[0]


def test_the_action_annotation_carries_a_nonce_the_operator_strips() -> None:
    value = action_value("retry", NOW)
    assert value == "retry:2026-11-24T12:00:00.000Z"
    assert parse_action(value) == ("retry", "2026-11-24T12:00:00.000Z")
    assert parse_action(" Pause ") == ("pause", None)


def test_a_spec_the_operator_has_not_seen_yet_means_the_verb_meets_a_new_run() -> None:
    obj = rollout_object({"phase": "Succeeded"})
    obj["status"]["specHash"] = "an-older-spec"
    r = cli_views.Rollout.from_object(obj)
    assert r.refusal("abort") is None  # the operator starts the new run first: Pending, abortable
    assert r.refusal("retry") == f"nothing to retry: {NAME} is Pending (retry applies to Failed, RolledBack or Aborted)"


def test_no_verb_applies_to_a_rollout_whose_spec_is_invalid() -> None:
    broken = {**SPEC, "verify": {"checks": []}}
    r = cli_views.Rollout.from_object(rollout_object({"phase": "Failed", "message": "invalid spec"}, spec=broken))
    refusal = r.refusal("retry")
    assert refusal is not None
    assert refusal.startswith(f"retry does not apply: the spec of {NAME} is invalid (")
    assert r.applicable_verbs() == []


# --- what `status` shows ----------------------------------------------------------------------------------------


def test_status_says_what_drifted_and_who_changed_it_while_the_rollout_waits() -> None:
    text_drift = (
        "target changed under the rollout: image is other:1 instead of registry/torghut:v42, set by kubectl-set"
    )
    obj = rollout_object({**AWAITING_CANARY, "awaitingApproval": False, "drift": text_drift})
    text = render(cli_views.render_status(cli_views.Rollout.from_object(obj), now=NOW))
    drift_line = next(x for x in text.splitlines() if x.startswith("Drift"))
    assert "image is other:1 instead of registry/torghut:v42" in drift_line
    assert "kubectl-set" in text
    assert "(no measurement until the target is back)" in text


def test_status_shows_phase_images_checks_measurements_steps_and_last_action() -> None:
    r = cli_views.Rollout.from_object(rollout_object(AWAITING_CANARY))
    text = render(cli_views.render_status(r, now=NOW))
    lines = text.splitlines()

    def line(label: str) -> str:
        return next(x for x in lines if x.startswith(label)).rstrip()

    assert line("Name") == "Name               trading/release-42"
    assert line("Phase").endswith("Promoting")
    assert line("Stage").endswith("promote:canary")
    assert line("Image").endswith("registry/torghut:v42")
    assert line("Previous image").endswith("registry/torghut:v41")
    assert line("Attempt").endswith("2")
    assert line("Message").endswith("step canary awaits approval: promote to apply it")
    assert line("Blocked by").endswith("—")
    assert "yes: kubectl torghut promote release-42 -n trading" in line("Awaiting approval")
    assert line("Started").endswith("2026-11-24 11:30:00Z (30m ago)")
    assert line("Verbs now").endswith("abort, promote, pause")
    # conditions, checks, measurements
    assert any(x.split()[:3] == ["Ready", "False", "AwaitingApproval"] for x in lines)
    assert "Checks (stage promote:paper; counts: successful/failed/inconclusive/errors)" in text
    flowing = next(x for x in lines if x.lstrip().startswith("decisions-flowing") and "Successful " in x)
    assert flowing.split()[:5] == ["decisions-flowing", "prometheus", "Successful", "3/0/0/0", "412"]
    assert "3/3 measurements successful; last:" in text
    assert "[value 412] > 0" in text  # messages are text, never rich markup
    assert "Inconclusive (approved)" in text
    assert "Measurements (last 3 per check)" in text
    assert sum(1 for x in lines if x.lstrip().startswith("decisions-flowing") and " ago " in x) == 3
    assert "empty vector: no data" in text
    # promotion steps
    step = {x.split()[1]: x for x in lines if x.strip()[:1].isdigit() and len(x.split()) > 2}
    assert "done" in step["paper"]
    assert "current: awaiting approval" in step["canary"]
    assert "pending" in step["live"]
    assert "LIVE_CAP=0.10, TRADING_MODE=live" in step["canary"]
    assert "promote 2026-11-24 11:58:00Z (2m ago): promoted: Inconclusive verdicts accepted" in text


def test_status_of_a_new_rollout_says_nothing_happened_yet() -> None:
    r = cli_views.Rollout.from_object(rollout_object({}))
    text = render(cli_views.render_status(r, now=NOW))
    assert "Pending" in text
    assert "none measured yet" in text
    assert "Last action\nnone" in text


def test_status_shows_a_pending_request_and_the_failed_stage() -> None:
    obj = rollout_object(
        {"phase": "Failed", "failedStage": "verify", "message": "verify failed (GateFailed): error-rate Failed"},
        annotations={ACTION_ANNOTATION: "retry:2026-11-24T11:59:00.00Z"},
    )
    text = render(cli_views.render_status(cli_views.Rollout.from_object(obj), now=NOW))
    assert "Failed stage       verify" in text
    assert "Pending action     retry (requested; the operator has not handled it yet)" in text
    assert "Verbs now          retry" in text


def test_a_status_this_plugin_cannot_read_is_one_clear_error() -> None:
    with pytest.raises(cli_session.CliError, match=r"the status of torghutrollout \"release-42\" is not readable"):
        cli_views.Rollout.from_object(rollout_object({"phase": "Exploded"}))


def test_list_rows_come_from_the_raw_objects() -> None:
    rows = [
        cli_views.rollout_row(rollout_object(AWAITING_CANARY), NOW),
        cli_views.rollout_row({"metadata": {"name": "fresh", "namespace": "ops", "creationTimestamp": ago(0.5)}}, NOW),
    ]
    assert rows[0]["ready"] == "False"
    assert rows[1]["phase"] == ""
    text = render(cli_views.render_list(rows, all_namespaces=True))
    header, first, second = text.splitlines()[:3]
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "STAGE", "READY", "AGE", "IMAGE"]
    assert first.split() == ["trading", "release-42", "Promoting", "promote:canary", "False", "30m", "torghut:v42"]
    assert second.split() == ["ops", "fresh", "—", "—", "—", "30s", "—"]


def test_list_wide_shows_the_whole_image_and_the_message() -> None:
    row = cli_views.rollout_row(rollout_object({**AWAITING_CANARY, "image": DIGEST_IMAGE}), NOW)
    narrow = render(cli_views.render_list([row], all_namespaces=False))
    assert narrow.splitlines()[1].split()[-1] == "torghut@884bec35f7d2"
    assert DIGEST_IMAGE not in narrow
    wide = Console(record=True, width=400, color_system=None)
    wide.print(cli_views.render_list([row], all_namespaces=False, wide=True))
    header, line = wide.export_text().splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGE", "READY", "AGE", "IMAGE", "MESSAGE"]
    assert DIGEST_IMAGE in line
    assert line.rstrip().endswith("step canary awaits approval: promote to apply it")


def test_history_merges_events_conditions_measurements_and_the_last_verb_oldest_first() -> None:
    r = cli_views.Rollout.from_object(rollout_object(AWAITING_CANARY))
    events: list[dict[str, Any]] = [
        {"type": "Normal", "reason": "Verifying", "message": "Deploying -> Verifying", "lastTimestamp": ago(20)},
        {"type": "Warning", "reason": "AwaitingApproval", "message": "step canary", "eventTime": ago(1), "count": 3},
    ]
    entries = cli_views.history(r, events)
    assert [(e.source, e.reason) for e in entries] == [
        ("event", "Verifying"),
        ("condition", "ChecksPassed"),
        ("measurement", "decisions-flowing"),
        ("measurement", "decisions-flowing"),
        ("measurement", "decisions-flowing"),
        ("measurement", "error-rate"),
        ("action", "promote"),
        ("event", "AwaitingApproval"),
        # Ready=False since the start, but its reason is the one the event above set: it follows that event
        ("condition", "AwaitingApproval"),
    ]
    text = render(cli_views.render_history(r, entries, NOW))
    assert "step canary (x3)" in text
    assert "2026-11-24 11:40:00Z" in text
    assert "412 > 0" in text


def _retried_events() -> list[dict[str, Any]]:
    def event(minutes: float, reason: str, message: str, type_: str = "Normal") -> dict[str, Any]:
        return {"type": type_, "reason": reason, "message": message, "lastTimestamp": ago(minutes)}

    return [
        event(29, "Verifying", "Deploying -> Verifying: 2 checks"),
        event(26, "RollingBack", "Verifying -> RollingBack: verify failed (GateFailed)", "Warning"),
        event(25, "RolledBack", "RollingBack -> RolledBack: previous image available", "Warning"),
        event(15, "Verb", "retry: retrying (attempt 2)"),
        event(15, "Pending", "RolledBack -> Pending: retry: attempt 2"),
        event(12, "Deploying", "Pending -> Deploying: rolling out"),
        event(8, "Promoting", "Verifying -> Promoting: step paper"),
    ]


def test_history_is_grouped_by_attempt_in_time_order_with_the_time_between_entries() -> None:
    r = cli_views.Rollout.from_object(rollout_object({**AWAITING_CANARY, "startedAt": ago(15)}))
    entries = cli_views.history(r, _retried_events())
    attempts = cli_views.by_attempt(entries, r.status.attempt)
    assert [a.number for a in attempts] == [1, 2]
    assert [e.reason for e in attempts[0].entries] == ["Verifying", "RollingBack", "RolledBack"]
    assert attempts[1].entries[0].message == "retry: retrying (attempt 2)"
    for attempt in attempts:
        times = [e.sort_key() for e in attempt.entries]
        assert times == sorted(times)
    # conditions older than the attempt (kept by retry) are shown in it, not in the attempt before
    assert all(e.source != "condition" for e in attempts[0].entries)
    text = render(cli_views.render_history(r, entries, NOW))
    first, second = text.index("Attempt 1"), text.index("Attempt 2")
    assert first < text.index("previous image available") < second
    assert "Attempt 1  2026-11-24 11:31:00Z, 4m" in text
    assert "Attempt 2  2026-11-24 11:45:00Z, 15m so far" in text
    rolled_back = next(x for x in text.splitlines() if "previous image available" in x)
    assert "+60s" in rolled_back  # a minute after RollingBack
    deploying = next(x for x in text.splitlines() if "Pending -> Deploying" in x)
    assert "+3m" in deploying


def test_history_after_a_spec_change_starts_a_new_run() -> None:
    r = cli_views.Rollout.from_object(rollout_object({"phase": "Verifying", "attempt": 1}))
    events = [
        {"type": "Normal", "reason": "Verifying", "message": "Deploying -> Verifying", "lastTimestamp": ago(20)},
        {"type": "Normal", "reason": "SpecChanged", "message": "spec changed", "lastTimestamp": ago(10)},
        {"type": "Normal", "reason": "Migrating", "message": "Pending -> Migrating", "lastTimestamp": ago(9)},
    ]
    attempts = cli_views.by_attempt(cli_views.history(r, events), 1)
    assert [(a.number, a.new_run, len(a.entries)) for a in attempts] == [(1, False, 1), (1, True, 2)]
    assert "(new run: the spec changed)" in render(cli_views.render_history(r, cli_views.history(r, events), NOW))


@pytest.mark.parametrize(
    ("seconds", "shown"), [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600, "3h"), (3 * 86400, "3d")]
)
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    assert cli_views.age(format_time(NOW - timedelta(seconds=seconds)), NOW) == shown


# --- commands without a cluster ---------------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(cli.app, list(args), env=env)
    assert "Traceback" not in result.output + result.stderr
    return result


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_kubeconfig_file_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "status", NAME, "--kubeconfig", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert one_line(result) == f"error: kubeconfig {tmp_path / 'nope'} not found (--kubeconfig)"

    result = invoke(runner, "list", env={"KUBECONFIG": str(tmp_path / "gone")})
    assert result.exit_code == 1
    assert one_line(result) == f"error: kubeconfig {tmp_path / 'gone'} not found (KUBECONFIG)"


def test_no_kubeconfig_at_all_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "list", env={"KUBECONFIG": "", "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": ""})
    assert result.exit_code == 1
    assert one_line(result).startswith(f"error: no kubeconfig: {tmp_path}/.kube/config not found")


def kubeconfig(path: Path, server: str, **context: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "s3cr3t-token"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", **context}}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on (bound, never listened: connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_an_unreachable_cluster_is_one_line_and_quick(runner: CliRunner, tmp_path: Path, closed_port: int) -> None:
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{closed_port}")
    for args in (["status", NAME], ["list", "-A"], ["retry", NAME], ["history", NAME], ["report", NAME]):
        result = invoke(runner, *args, "--kubeconfig", str(config))
        assert result.exit_code == 1, args
        line = one_line(result)
        assert line.startswith(f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{closed_port}: ")
        assert "s3cr3t-token" not in result.output + result.stderr


def test_global_options_work_before_and_after_the_command(runner: CliRunner, tmp_path: Path, closed_port: int) -> None:
    config = str(kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{closed_port}"))
    before = invoke(runner, "--kubeconfig", config, "-n", "x", "status", NAME)
    after = invoke(runner, "status", NAME, "-n", "x", "--kubeconfig", config)
    assert before.exit_code == after.exit_code == 1
    assert one_line(before) == one_line(after)


def test_a_broken_kubeconfig_or_unknown_context_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n")
    result = invoke(runner, "list", "--kubeconfig", str(bad))
    assert result.exit_code == 1
    assert one_line(result).startswith(f"error: kubeconfig {bad} is not valid YAML")

    config = kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1")
    result = invoke(runner, "list", "--kubeconfig", str(config), "--context", "prod")
    assert result.exit_code == 1
    assert one_line(result) == f"error: context 'prod' not found in kubeconfig {config}"


def test_usage_errors_are_one_line_with_exit_code_2(runner: CliRunner) -> None:
    for args, expected in (
        (["undo", NAME], "error: No such command 'undo'. See 'kubectl torghut --help'."),
        (["status"], "error: Missing argument 'name'. See 'kubectl torghut status --help'."),
        (["status", NAME, "-o", "yaml"], "error: unknown output format 'yaml': use -o json or -o wide"),
        (["history", NAME, "-o", "wide"], "error: unknown output format 'wide': use -o json"),
        (["retry", NAME, "--timeout", "soon"], "error: --timeout 'soon' is not a duration such as 60s, 5m or 1h30m"),
    ):
        result = invoke(runner, *args)
        assert result.exit_code == 2, args
        assert one_line(result) == expected


def test_version_needs_no_cluster(runner: CliRunner) -> None:
    result = invoke(runner, "version")
    assert result.exit_code == 0
    assert result.stdout.startswith("kubectl-torghut ")
    assert "torghut.proompteng.ai/v1alpha1" in result.stdout


class FakeSession(cli_session.Session):
    """A session whose API answers are canned: the verb flow without an API server."""

    def __init__(self, obj: dict[str, Any] | None) -> None:
        super().__init__(api=None, namespace=NAMESPACE, server="https://fake")  # type: ignore[arg-type]
        self.obj = obj
        self.patches: list[tuple[str, str, str]] = []

    def get_rollout(self, name: str) -> dict[str, Any]:
        if self.obj is None:
            raise cli_session.CliError(f'torghutrollout "{name}" not found in namespace "{self.namespace}"')
        return self.obj

    def patch_annotation(self, name: str, key: str, value: str) -> dict[str, Any]:
        self.patches.append((name, key, value))
        assert self.obj is not None
        return self.obj


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    session = FakeSession(rollout_object(AWAITING_CANARY))
    monkeypatch.setattr(cli, "connect", lambda *_: session)
    return session


def test_a_verb_that_does_not_apply_is_refused_before_anything_is_written(runner: CliRunner, fake: FakeSession) -> None:
    fake.obj = rollout_object({"phase": "Succeeded"})
    result = invoke(runner, "retry", NAME)
    assert result.exit_code == 2
    assert one_line(result) == f"nothing to retry: {NAME} is Succeeded (retry applies to Failed, RolledBack or Aborted)"
    assert fake.patches == []


def test_a_verb_that_applies_sets_the_action_annotation_with_a_nonce(runner: CliRunner, fake: FakeSession) -> None:
    result = invoke(runner, "promote", NAME, "--no-wait")
    assert result.exit_code == 0, result.stderr
    [(name, key, value)] = fake.patches
    assert (name, key) == (NAME, ACTION_ANNOTATION)
    assert parse_action(value)[0] == "promote"
    assert parse_action(value)[1]
    assert result.stdout.startswith(f"promote requested for torghutrollout {NAMESPACE}/{NAME}")


def test_an_unknown_rollout_is_one_line(runner: CliRunner, fake: FakeSession) -> None:
    fake.obj = None
    for args in (["status", "nope"], ["abort", "nope"], ["report", "nope"]):
        result = invoke(runner, *args)
        assert result.exit_code == 1
        assert one_line(result) == f'error: torghutrollout "nope" not found in namespace "{NAMESPACE}"'


def test_status_json_is_the_status_document(runner: CliRunner, fake: FakeSession) -> None:
    result = invoke(runner, "status", NAME, "-o", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["phase"] == "Promoting"


def test_an_unexpected_failure_is_still_one_line(
    runner: CliRunner, fake: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(name: str) -> dict[str, Any]:
        raise RuntimeError("boom at https://admin:hunter2@example.com")

    monkeypatch.setattr(fake, "get_rollout", boom)
    result = invoke(runner, "status", NAME)
    assert result.exit_code == 1
    assert one_line(result) == "error: unexpected RuntimeError: boom at https://***@example.com"


class StubApiServer:
    """An HTTP server answering every request as the API server does in one situation (status, body)."""

    def __init__(self, status: int, body: str, content_type: str = "application/json") -> None:
        answer = (status, body.encode(), content_type)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                code, payload, kind = answer
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def status_body(code: int, reason: str, message: str) -> str:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}
    )


def test_a_missing_crd_is_one_line_that_says_so(runner: CliRunner, tmp_path: Path) -> None:
    # What kube-apiserver answers for a group/resource it does not serve (recorded from a real one).
    with StubApiServer(404, "404 page not found\n", "text/plain; charset=utf-8") as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url)
        for args in (["status", NAME], ["list"], ["list", "-A"], ["pause", NAME]):
            result = invoke(runner, *args, "--kubeconfig", str(config))
            assert result.exit_code == 1, args
            assert one_line(result) == (
                "error: the TorghutRollout CRD (torghutrollouts.torghut.proompteng.ai, v1alpha1) is not installed "
                f"in the cluster at {api.url}; apply crds/torghutrollouts.yaml"
            )


def test_forbidden_and_unauthorized_are_one_line(runner: CliRunner, tmp_path: Path) -> None:
    forbidden = 'torghutrollouts.torghut.proompteng.ai "release-42" is forbidden: User "dev" cannot get resource'
    with StubApiServer(403, status_body(403, "Forbidden", forbidden)) as api:
        result = invoke(runner, "status", NAME, "--kubeconfig", str(kubeconfig(tmp_path / "a", api.url)))
        assert result.exit_code == 1
        assert one_line(result) == f"error: get torghutrollout {NAME}: {forbidden}"
    with StubApiServer(401, status_body(401, "Unauthorized", "Unauthorized")) as api:
        result = invoke(runner, "list", "--kubeconfig", str(kubeconfig(tmp_path / "b", api.url)))
        assert result.exit_code == 1
        assert one_line(result) == (
            "error: list torghutrollouts: the API server rejected the kubeconfig's credentials (401 Unauthorized)"
        )
        assert "s3cr3t-token" not in result.output + result.stderr


def test_the_namespace_defaults_to_the_kubeconfig_contexts(runner: CliRunner, tmp_path: Path) -> None:
    not_found = status_body(404, "NotFound", 'torghutrollouts.torghut.proompteng.ai "x" not found')
    body = json.loads(not_found)
    body["details"] = {"name": "x", "group": "torghut.proompteng.ai", "kind": "torghutrollouts"}
    with StubApiServer(404, json.dumps(body)) as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url, namespace="team-a")
        result = invoke(runner, "status", "x", "--kubeconfig", str(config))
        assert one_line(result) == 'error: torghutrollout "x" not found in namespace "team-a"'
        result = invoke(runner, "status", "x", "--kubeconfig", str(config), "-n", "team-b")
        assert one_line(result) == 'error: torghutrollout "x" not found in namespace "team-b"'


def test_report_pr_prints_a_body_that_fits_a_pull_request(
    runner: CliRunner, fake: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = "value 0.5 above max 0 " + "x" * 900
    checks = [
        {
            "name": f"check-{i:03d}",
            "stage": "verify",
            "provider": "postgres",
            "query": "SELECT " + "y" * 3000,
            "threshold": "max 0",
            "phase": "Failed",
            "measurements": [{"phase": "Failed", "at": ago(j), "value": "0.5", "message": long} for j in range(10)],
        }
        for i in range(300)
    ]
    fake.obj = rollout_object({"phase": "Failed", "message": "m" * 4000, "checks": checks})
    monkeypatch.setattr(fake, "get_report", lambda name, uid: None, raising=False)
    whole = invoke(runner, "report", NAME)
    assert whole.exit_code == 0, whole.stderr
    assert len(whole.stdout) > 65_536
    result = invoke(runner, "report", NAME, "--pr")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout) < 65_536
    assert result.stdout.startswith(f"# TorghutRollout evidence: {NAMESPACE}/{NAME}")
    assert "## Verdicts" in result.stdout
    assert "Shortened to fit a pull request" in result.stdout


# --- views at 80, 100 and 160 columns ---------------------------------------------------------------------------

WIDTHS = (80, 100, 160)


def render_at(renderable: Any, width: int) -> list[str]:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def _at_a_glance(lines: list[str], *needles: str) -> None:
    """Every needle whole on some line (not folded, not cut with an ellipsis), and no line wider than the view."""
    for needle in needles:
        assert any(needle in line for line in lines), (needle, "\n".join(lines))
    assert not any("…" in line for line in lines)


def _digest_rollout() -> cli_views.Rollout:
    return cli_views.Rollout.from_object(
        rollout_object(
            {**AWAITING_CANARY, "image": DIGEST_IMAGE, "previousImage": DIGEST_IMAGE.replace("884b", "1f0c")}
        )
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_status_fits_the_terminal_and_shows_phase_stage_ready_and_age(width: int) -> None:
    lines = render_at(cli_views.render_status(_digest_rollout(), now=NOW, width=width), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    _at_a_glance(lines, "Promoting", "promote:canary", "False (AwaitingApproval)", "30m")
    image = next(line for line in lines if line.startswith("Image"))
    if width >= 160:
        assert image.rstrip().endswith(DIGEST_IMAGE)
    else:
        assert image.rstrip().endswith("torghut@884bec35f7d2")


BACKFILLING: dict[str, Any] = {
    "phase": "Migrating",
    "stage": "migrate",
    "message": "migrating: backfill 0004_backfill_routes.sql: 45% (450,000 / 1,000,000 rows), 12,000 rows/s, ETA 46s",
    "startedAt": ago(2),
    "migration": {
        "mode": "sql",
        "backfill": {
            "file": "0004_backfill_routes.sql",
            "table": "public.executions",
            "rowsDone": 450_000,
            "rowsTotal": 1_000_000,
            "batches": 90,
            "batchSize": 5_000,
            "rowsPerSecond": 12_000.4,
            "etaSeconds": 46,
            "throttled": "2 lock waits on public.executions",
            "finished": False,
            "updatedAt": ago(0.1),
        },
    },
}


@pytest.mark.parametrize("width", WIDTHS)
def test_status_draws_a_progress_bar_for_a_running_backfill(width: int) -> None:
    r = cli_views.Rollout.from_object(rollout_object(BACKFILLING))
    lines = render_at(cli_views.render_status(r, now=NOW, width=width), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    start = next(i for i, line in enumerate(lines) if line.startswith("Backfill "))
    assert lines[start].split()[1:] == ["0004_backfill_routes.sql", "on", "public.executions"]
    bar = lines[start + 1].split()
    cells = 30 if width >= 100 else 20
    assert bar[0] == "█" * (cells * 45 // 100) + "░" * (cells - cells * 45 // 100)
    assert bar[1:] == ["45%", "450,000", "/", "1,000,000", "rows"]
    rest = " ".join(line.strip() for line in lines[start + 2 : start + 4])
    assert rest.startswith("12,000 rows/s, ETA 46s, batch 5,000; throttled: 2 lock waits on public.executions")


def test_why_says_how_far_a_running_backfill_is_and_when_it_last_reported() -> None:
    why = cli_views.explain(cli_views.Rollout.from_object(rollout_object(BACKFILLING)), NOW)
    details = dict(why.details)
    assert details["Backfill"] == (
        "0004_backfill_routes.sql: 45% (450,000 / 1,000,000 rows), 12,000 rows/s, ETA 46s; "
        "throttled: 2 lock waits on public.executions (reported 6s ago)"
    )


def test_status_keeps_a_finished_backfills_figures_and_shows_none_without_one() -> None:
    finished = {**BACKFILLING["migration"]["backfill"], "rowsDone": 1_000_000, "finished": True, "etaSeconds": None}
    obj = rollout_object({**BACKFILLING, "phase": "Deploying", "migration": {"mode": "sql", "backfill": finished}})
    lines = render_at(cli_views.render_status(cli_views.Rollout.from_object(obj), now=NOW, width=100), 100)
    start = next(i for i, line in enumerate(lines) if line.startswith("Backfill "))
    assert lines[start + 1].split()[1:] == ["100%", "1,000,000", "/", "1,000,000", "rows"]
    assert lines[start + 1].split()[0] == "█" * 30
    assert lines[start + 2].strip() == "done in 90 batches, 12,000 rows/s"
    plain = render_at(
        cli_views.render_status(cli_views.Rollout.from_object(rollout_object(AWAITING_CANARY)), now=NOW), 100
    )
    assert not any(line.startswith("Backfill") for line in plain)


def test_status_wide_shows_whole_images_at_any_width() -> None:
    text = "\n".join(render_at(cli_views.render_status(_digest_rollout(), now=NOW, width=80, wide=True), 80))
    assert DIGEST_IMAGE.replace("\n", "") in text.replace("\n                   ", "")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("all_namespaces", [False, True])
def test_list_fits_the_terminal_and_shows_phase_stage_ready_and_age(width: int, all_namespaces: bool) -> None:
    rows = [
        cli_views.rollout_row(
            rollout_object({**AWAITING_CANARY, "image": DIGEST_IMAGE}, name="torghut-2026-11-24"), NOW
        )
    ]
    lines = render_at(cli_views.render_list(rows, all_namespaces=all_namespaces), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    header = lines[0].split()
    assert header[: 7 if all_namespaces else 6][-5:] == ["PHASE", "STAGE", "READY", "AGE", "IMAGE"]
    first = lines[1].split()
    assert first[: 6 if all_namespaces else 5][-5:] == [
        "torghut-2026-11-24",
        "Promoting",
        "promote:canary",
        "False",
        "30m",
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_history_fits_the_terminal_and_shows_phase_stage_ready_and_age(width: int) -> None:
    r = cli_views.Rollout.from_object(rollout_object({**AWAITING_CANARY, "startedAt": ago(15)}))
    lines = render_at(cli_views.render_history(r, cli_views.history(r, _retried_events()), NOW, width), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    _at_a_glance(lines, "Promoting", "promote:canary", "False (AwaitingApproval)", "age 30m", "Attempt 1", "Attempt 2")


@pytest.mark.parametrize("width", WIDTHS)
def test_why_fits_the_terminal_and_shows_phase_stage_ready_and_age(width: int) -> None:
    r = _digest_rollout()
    lines = render_at(cli_views.render_why(cli_views.explain(r, NOW), NOW, name=r.name, namespace=r.namespace), width)
    assert max(len(line.rstrip()) for line in lines) <= width
    _at_a_glance(lines, "Promoting", "promote:canary", "False (AwaitingApproval)", "30m", "Reason", "Do")


@given(
    path=st.lists(st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4),
    digest=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    tag=st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True),
)
def test_a_short_image_keeps_the_repository_name_and_the_digest_prefix(
    path: list[str], digest: str, tag: str | None
) -> None:
    repository = "/".join(path)
    by_digest = cli_views.short_image(f"{repository}@sha256:{digest}")
    assert by_digest == f"{path[-1]}@{digest[:12]}"
    if tag is not None:
        assert cli_views.short_image(f"{repository}:{tag}") == f"{path[-1]}:{tag}"


# --- why --------------------------------------------------------------------------------------------------------


def _condition(type_: str, status: str, reason: str, message: str = "", minutes: float = 10) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": ago(minutes)}


def _why(status: dict[str, Any], **meta: Any) -> cli_views.Why:
    return cli_views.explain(cli_views.Rollout.from_object(rollout_object(status, **meta)), NOW)


def test_why_names_the_check_its_value_threshold_query_how_long_and_the_verb() -> None:
    w = _why(AWAITING_CANARY)
    assert (w.state, w.reason, w.condition) == ("waiting", "AwaitingApproval", "Ready")
    assert w.check is None  # every check passed or was accepted: the step waits for a human, not for a check
    assert w.do == "`promote` to accept, `abort` to roll back"
    assert w.next_verbs == ("promote", "abort")
    text = render(cli_views.render_why(w, NOW, name=NAME, namespace=NAMESPACE))
    assert "Next               kubectl torghut promote release-42 -n trading  or  kubectl torghut abort" in text
    assert "AwaitingApproval (Ready), since 2026-11-24 11:30:00Z (30m)" in text


def test_why_for_a_failed_check_gives_value_against_threshold_query_and_since() -> None:
    failing = {
        "name": "error-rate",
        "stage": "verify",
        "provider": "prometheus",
        "query": "sum(rate(errors[5m]))",
        "threshold": "<= 0.01",
        "phase": "Failed",
        "failed": 2,
        "message": "2 failed measurement(s) (limit 1): value 0.2 above max 0.01",
        "measurements": [
            {"phase": "Successful", "at": ago(9), "value": "0.001"},
            {"phase": "Failed", "at": ago(7), "value": "0.3"},
            {"phase": "Failed", "at": ago(6), "value": "0.2"},
        ],
    }
    w = _why(
        {
            "phase": "RolledBack",
            "failedStage": "verify",
            "message": "verify failed (GateFailed): error-rate Failed",
            "checks": [failing],
            "conditions": [
                _condition("Ready", "False", "GateFailed", "error-rate Failed"),
                _condition("Verified", "False", "GateFailed", "error-rate Failed"),
                _condition("Restored", "True", "Restored"),
            ],
        }
    )
    assert (w.state, w.reason, w.check, w.value, w.threshold) == (
        "stopped",
        "GateFailed",
        "error-rate",
        "0.2",
        "<= 0.01",
    )
    assert w.query == "sum(rate(errors[5m]))"
    assert w.check_since == ago(7)
    assert w.means == "a check failed more than `failureLimit`; the message has value, threshold, query"
    assert w.next_verbs == ("retry",)
    text = render(cli_views.render_why(w, NOW, name=NAME, namespace=NAMESPACE))
    assert "Last value         0.2 against <= 0.01" in text
    assert "So for             7m (since 2026-11-24 11:53:00Z)" in text
    assert "Next               kubectl torghut retry release-42 -n trading" in text


@pytest.mark.parametrize(
    ("status", "reason", "verbs", "shown"),
    [
        (
            {
                "phase": "Failed",
                "message": "rollback could not complete",
                "restore": {"image": "registry/torghut:v41", "env": {"TRADING_MODE": "paper"}},
                "conditions": [
                    _condition("Ready", "False", "RestoreFailed"),
                    _condition("Restored", "False", "RestoreFailed", "it may still run the new image or trading env"),
                ],
            },
            "RestoreFailed",
            ("retry",),
            "registry/torghut:v41; TRADING_MODE=paper",
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    _condition("Ready", "False", "GateFailed"),
                    _condition("Restored", "False", "RollbackDisabled", "image left running"),
                ],
            },
            "RollbackDisabled",
            ("retry",),
            "roll the image back by hand",
        ),
        (
            {
                "phase": "Promoting",
                "stage": "promote:canary",
                "promotion": {"step": 1, "stepName": "canary", "message": "step canary blocked: 0 approved rows"},
                "conditions": [
                    _condition("Ready", "False", "Promoting"),
                    _condition("Promoted", "False", "MissingEvidence", "step canary blocked: 0 approved rows"),
                ],
            },
            "MissingEvidence",
            ("abort",),
            "step canary blocked: 0 approved rows",
        ),
        (
            {
                "phase": "Promoting",
                "stage": "promote:canary",
                "promotion": {"step": 1, "stepName": "canary", "soakSince": ago(10)},
                "conditions": [_condition("Promoted", "False", "Soaking", "soaking")],
            },
            "Soaking",
            (),
            "wait",
        ),
        (
            {"phase": "Verifying", "conditions": [_condition("Ready", "False", "ReconcileError", "403 forbidden")]},
            "ReconcileError",
            (),
            "read the operator log",
        ),
        (
            {"phase": "Paused", "pausedFrom": "Verifying", "pausedBy": "verb", "conditions": []},
            "Paused",
            ("resume",),
            "resume",
        ),
        (
            {
                "phase": "Verifying",
                "checks": [
                    {
                        "name": "research-writes",
                        "stage": "verify",
                        "provider": "postgres",
                        "query": "SELECT 1",
                        "threshold": ">= 1",
                        "phase": "Running",
                        "errors": 2,
                        "message": "schema lacks research_promotions.decision_action (added by Torghut migration 0011)",
                    }
                ],
                "conditions": [_condition("Ready", "False", "GateError", "research-writes erroring")],
            },
            "GateError",
            (),
            "run that migration first",
        ),
    ],
)
def test_why_explains_each_reason_with_the_troubleshooting_advice(
    status: dict[str, Any], reason: str, verbs: tuple[str, ...], shown: str
) -> None:
    w = _why(status)
    assert w.reason == reason
    assert w.next_verbs == verbs
    text = render(cli_views.render_why(w, NOW, name=NAME, namespace=NAMESPACE))
    assert shown in text
    assert "Do " in text


def test_why_for_a_soaking_step_says_how_much_soak_is_left() -> None:
    spec = {
        **SPEC,
        "promotion": {"steps": [{"name": "paper", "env": {"TRADING_MODE": "paper"}, "requiredSoakTime": "30m"}]},
    }
    obj = rollout_object(
        {
            "phase": "Promoting",
            "stage": "promote:paper",
            "promotion": {"step": 0, "stepName": "paper", "soakSince": ago(10)},
            "conditions": [_condition("Promoted", "False", "Soaking", "soaking")],
        },
        spec=spec,
    )
    w = cli_views.explain(cli_views.Rollout.from_object(obj), NOW)
    assert dict(w.details)["Soak"] == "10m of 30m since 2026-11-24 11:50:00Z (20m left)"


def test_why_for_a_succeeded_rollout_says_there_is_nothing_to_do() -> None:
    w = _why({"phase": "Succeeded", "conditions": [_condition("Ready", "True", "Succeeded")]})
    assert (w.state, w.reason, w.do, w.next_verbs) == ("finished", None, None, ())
    assert "finished: nothing to do" in render(cli_views.render_why(w, NOW, name=NAME, namespace=NAMESPACE))


def test_the_readme_troubleshooting_table_is_the_one_why_quotes() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    table = "\n".join(lines[start:end])
    assert table == markdown_table(), "regenerate the README's table from torghut_operator.core.troubleshooting"


def test_status_shows_the_failed_migration_jobs_last_log_lines() -> None:
    failed = {
        "phase": "Failed",
        "message": "migrate failed (MigrationFailed): migration Job release-42-m-1 failed: BackoffLimitExceeded",
        "migration": {
            "mode": "job",
            "jobName": "release-42-m-1",
            "jobLogs": "INFO  [alembic] Running upgrade 0006 -> 0007\npsycopg.errors.UndefinedTable: executions",
        },
    }
    text = render(cli_views.render_status(cli_views.Rollout.from_object(rollout_object(failed)), now=NOW))
    assert "Migration Job log (release-42-m-1, last lines)" in text
    assert "psycopg.errors.UndefinedTable: executions" in text

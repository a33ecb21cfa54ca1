"""`kubectl torghut` as kubectl runs it: the `kubectl-torghut` console script found on PATH, against a real API
server with the CRD installed. Most tests write a rollout's status by hand (`kubectl patch --subresource=status`)
and need no operator; the last one drives the verbs through the operator process and waits for their results.

Statuses written here carry the spec's real hash and sit in phases the operator leaves alone (Succeeded,
Failed, Paused, a step awaiting approval), so an operator running in the same cluster does not rewrite them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClusterHandle
from tests.e2e.conftest import InClusterOperator
from torghut_localstack.kubectl import Kubectl
from torghut_localstack.wait import wait_for
from torghut_operator.core.api.spec import TorghutRolloutSpec
from torghut_operator.core.manifests import ACTION_ANNOTATION
from torghut_operator.core.timefmt import format_time, utcnow

pytestmark = pytest.mark.e2e

SCRIPT = Path(sys.executable).parent / "kubectl-torghut"
SPEC: dict[str, Any] = {
    "target": {
        "kind": "Deployment",
        "name": "torghut",
        "container": "torghut",
        "image": "registry.example/torghut:v42",
    },
    "prometheus": {"url": "http://127.0.0.1:9"},
    "verify": {
        "interval": "1s",
        "count": 3,
        "checks": [
            {"name": "decisions-flowing", "prometheus": {"query": "sum(decisions)"}, "successCondition": "result > 0"},
            {"name": "error-rate", "prometheus": {"query": "sum(rate(errors[5m]))"}, "max": 0.01},
        ],
    },
    "promotion": {
        "steps": [
            {"name": "paper", "env": {"TRADING_MODE": "paper"}},
            # A paper canary: a live step needs research_promotions evidence, which an operator sharing this cluster
            # would go and read (these rollouts have no database), rewriting the hand-written status.
            {"name": "canary", "env": {"TRADING_MODE": "paper", "LIVE_CAP": "0.10"}, "requiresApproval": True},
        ]
    },
}
SPEC_HASH = TorghutRolloutSpec.model_validate(SPEC).spec_hash()


def at(minutes_ago: float = 0) -> str:
    return format_time(utcnow() - timedelta(minutes=minutes_ago))


def condition(type_: str, status: str, reason: str, message: str = "", minutes_ago: float = 10) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at(minutes_ago),
    }


def awaiting_canary() -> dict[str, Any]:
    return {
        "phase": "Promoting",
        "stage": "promote:canary",
        "message": "step canary awaits approval: promote to apply it",
        "image": "registry.example/torghut:v42",
        "previousImage": "registry.example/torghut:v41",
        "attempt": 1,
        "startedAt": at(20),
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
                "message": "3/3 measurements successful; last: 412 > 0",
                "measurements": [
                    {"phase": "Successful", "at": at(3), "value": "400"},
                    {"phase": "Successful", "at": at(2), "value": "412", "message": "412 > 0"},
                ],
            }
        ],
        "lastAction": {"verb": "promote", "at": at(5), "result": "step paper approved"},
        "conditions": [
            condition("Ready", "False", "AwaitingApproval", "step canary awaits approval: promote to apply it", 4),
            condition("Verified", "True", "ChecksPassed", "decisions-flowing: 3/3 measurements successful", 15),
        ],
    }


def succeeded() -> dict[str, Any]:
    return {
        "phase": "Succeeded",
        "message": "registry.example/torghut:v42 verified and promoted: paper -> canary",
        "image": "registry.example/torghut:v42",
        "previousImage": "registry.example/torghut:v41",
        "startedAt": at(30),
        "completedAt": at(1),
        "conditions": [condition("Ready", "True", "Succeeded", "promoted", 1)],
    }


@dataclass
class Plugin:
    """`kubectl torghut ...` run the way a user runs it: kubectl finds `kubectl-torghut` on PATH."""

    kubectl: Kubectl
    cluster: ClusterHandle
    plugin_dir: Path
    namespace: str

    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**self.cluster.env, "PATH": str(self.plugin_dir), "PYTHONUNBUFFERED": "1", **self.env_extra}

    def argv(self, *args: str) -> list[str]:
        return [str(self.cluster.bin_dir / "kubectl"), "torghut", *args]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    def create(self, name: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
        """A TorghutRollout in the test's namespace, with ``status`` written through the status subresource."""
        self.kubectl.apply(
            {
                "apiVersion": "torghut.proompteng.ai/v1alpha1",
                "kind": "TorghutRollout",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {**SPEC, **spec},
            },
            namespace=self.namespace,
        )
        if status is not None:
            self.set_status(name, status)
        return self.get(name)

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        body = json.dumps({"status": {"specHash": SPEC_HASH, **status}})
        self.kubectl(
            "patch", "torghutrollout", name, "-n", self.namespace, "--subresource=status", "--type=merge", "-p", body
        )

    def get(self, name: str) -> dict[str, Any]:
        obj = self.kubectl.get("torghutrollout", name, namespace=self.namespace)
        assert obj is not None
        return obj


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the project (pip install -e .) to get the console script"
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "kubectl-torghut").symlink_to(SCRIPT)
    return folder


@pytest.fixture
def plugin(cluster: ClusterHandle, kubectl: Kubectl, crd: None, namespace: str, plugin_dir: Path) -> Plugin:
    return Plugin(kubectl, cluster, plugin_dir, namespace)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_kubectl_finds_the_plugin_on_path(plugin: Plugin) -> None:
    listed = subprocess.run(
        [str(plugin.cluster.bin_dir / "kubectl"), "plugin", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env=plugin.env,
        check=False,
    )
    assert str(plugin.plugin_dir / "kubectl-torghut") in listed.stdout, listed.stdout + listed.stderr
    version = plugin("version")
    assert version.returncode == 0
    assert version.stdout.startswith("kubectl-torghut ")


def test_status_shows_where_the_rollout_stands(plugin: Plugin) -> None:
    plugin.create("release-42", awaiting_canary())
    done = plugin("status", "release-42", "-n", plugin.namespace)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert lines["Name"].endswith(f"{plugin.namespace}/release-42")
    assert lines["Phase"].rstrip().endswith("Promoting")
    assert lines["Stage"].rstrip().endswith("promote:canary")
    assert lines["Image"].rstrip().endswith("registry.example/torghut:v42")
    assert lines["Previous image"].rstrip().endswith("registry.example/torghut:v41")
    assert f"yes: kubectl torghut promote release-42 -n {plugin.namespace}" in lines["Awaiting approval"]
    assert lines["Verbs now"].rstrip().endswith("abort, promote, pause")
    assert "AwaitingApproval" in out
    assert "decisions-flowing" in out
    assert "3/0/0/0" in out
    assert "current: awaiting approval" in out
    assert "promote " in out
    assert "step paper approved" in out
    # -n after the command or before it, and -o json for scripts
    before = plugin("-n", plugin.namespace, "status", "release-42", "-o", "json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["phase"] == "Promoting"


def test_list_shows_phase_stage_image_ready_and_age(plugin: Plugin) -> None:
    plugin.create("alpha", succeeded())
    plugin.create("beta", awaiting_canary())
    done = plugin("list", "-n", plugin.namespace)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.strip().splitlines()]
    assert rows[0] == ["NAME", "PHASE", "STAGE", "READY", "AGE", "IMAGE"]
    assert [r[:4] + r[5:] for r in rows[1:]] == [
        ["alpha", "Succeeded", "—", "True", "torghut:v42"],
        ["beta", "Promoting", "promote:canary", "False", "torghut:v42"],
    ]
    wide = plugin("list", "-n", plugin.namespace, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    assert wide.stdout.splitlines()[0].split() == ["NAME", "PHASE", "STAGE", "READY", "AGE", "IMAGE", "MESSAGE"]
    assert "registry.example/torghut:v42" in wide.stdout
    everywhere = plugin("list", "-A", "-o", "json")
    assert everywhere.returncode == 0, everywhere.stderr
    mine = [r for r in json.loads(everywhere.stdout) if r["namespace"] == plugin.namespace]
    assert [(r["name"], r["phase"]) for r in mine] == [("alpha", "Succeeded"), ("beta", "Promoting")]


def test_report_prints_the_operators_report_else_renders_one_from_status(plugin: Plugin, tmp_path: Path) -> None:
    obj = plugin.create("release-42", succeeded())
    rendered = plugin("report", "release-42", "-n", plugin.namespace)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith(f"# TorghutRollout evidence: {plugin.namespace}/release-42\n")
    assert "**Succeeded**" in rendered.stdout
    assert "decisions-flowing" in rendered.stdout  # the spec's checks, listed even without measurements

    published = "# TorghutRollout evidence (published by the operator)\n\n| Check | Verdict |\n"
    plugin.kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "torghut-evidence-release-42",
                "ownerReferences": [
                    {
                        "apiVersion": "torghut.proompteng.ai/v1alpha1",
                        "kind": "TorghutRollout",
                        "name": "release-42",
                        "uid": obj["metadata"]["uid"],
                    }
                ],
            },
            "data": {"report.md": published},
        },
        namespace=plugin.namespace,
    )
    done = plugin("report", "release-42", "-n", plugin.namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout == published
    target = tmp_path / "evidence.md"
    written = plugin("report", "release-42", "-n", plugin.namespace, "-o", str(target))
    assert written.returncode == 0, written.stderr
    assert target.read_text() == published
    assert done.stdout == published


def test_a_verb_that_does_not_apply_is_refused_with_one_line_and_exit_2(plugin: Plugin) -> None:
    plugin.create("release-42", succeeded())
    plugin.create("waiting", awaiting_canary())
    cases = [
        (
            "retry",
            "release-42",
            "nothing to retry: release-42 is Succeeded (retry applies to Failed, RolledBack or Aborted)",
        ),
        (
            "abort",
            "release-42",
            "nothing to abort: release-42 is Succeeded (abort applies while a rollout runs or is paused, "
            "not once it is Succeeded, Failed, RolledBack or Aborted)",
        ),
        ("resume", "waiting", "nothing to resume: waiting is Promoting (resume applies to a Paused rollout)"),
        ("promote", "release-42", "nothing awaits approval: release-42 is Succeeded"),
    ]
    for verb, name, expected in cases:
        done = plugin(verb, name, "-n", plugin.namespace)
        assert done.returncode == 2, (verb, done.stdout, done.stderr)
        assert one_line(done.stderr).startswith(expected), done.stderr
        assert ACTION_ANNOTATION not in (plugin.get(name)["metadata"].get("annotations") or {})


def test_a_verb_that_applies_sets_the_action_annotation(plugin: Plugin) -> None:
    before = utcnow()
    plugin.create("release-42", awaiting_canary())
    done = plugin("promote", "release-42", "-n", plugin.namespace, "--no-wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"promote requested for torghutrollout {plugin.namespace}/release-42")
    obj = plugin.get("release-42")
    value = (obj["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
    if value is None:  # an operator in this cluster already handled it: then it recorded the verb
        last = obj["status"]["lastAction"]
        assert last["verb"] == "promote"
        assert last["at"] >= format_time(before)
    else:
        verb, _, nonce = value.partition(":")
        assert verb == "promote"
        assert nonce >= format_time(before)


def test_unknown_rollouts_and_namespaces_are_one_line(plugin: Plugin) -> None:
    for args in (["status", "nope"], ["promote", "nope"], ["history", "nope"], ["report", "nope"]):
        done = plugin(*args, "-n", plugin.namespace)
        assert done.returncode == 1, args
        assert one_line(done.stderr) == f'error: torghutrollout "nope" not found in namespace "{plugin.namespace}"'
    done = plugin("list", "-n", plugin.namespace)
    assert done.returncode == 0
    assert one_line(done.stderr) == f'No torghutrollouts found in namespace "{plugin.namespace}".'


def test_history_is_the_timeline_of_events_conditions_and_the_last_verb(plugin: Plugin) -> None:
    obj = plugin.create("release-42", awaiting_canary())
    plugin.kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "release-42.deploying"},
            "involvedObject": {
                "apiVersion": "torghut.proompteng.ai/v1alpha1",
                "kind": "TorghutRollout",
                "name": "release-42",
                "namespace": plugin.namespace,
                "uid": obj["metadata"]["uid"],
            },
            "type": "Normal",
            "reason": "Deploying",
            "message": "Pending -> Deploying: rolling out registry.example/torghut:v42",
            "firstTimestamp": at(18),
            "lastTimestamp": at(18),
            "count": 1,
            "source": {"component": "torghut-rollout-operator"},
        },
        namespace=plugin.namespace,
    )
    done = plugin("history", "release-42", "-n", plugin.namespace)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.split("Attempt 1", 1)[1].splitlines() if line.strip()]
    order = [
        next(i for i, line in enumerate(lines) if needle in line)
        for needle in ("Deploying", "ChecksPassed", "step paper approved", "AwaitingApproval")
    ]
    assert order == sorted(order), done.stdout
    entries = json.loads(plugin("history", "release-42", "-n", plugin.namespace, "-o", "json").stdout)
    assert {e["source"] for e in entries} >= {"event", "condition", "action"}


def test_status_watch_follows_the_rollout_and_exits_with_its_outcome(plugin: Plugin) -> None:
    plugin.create("good", {**awaiting_canary(), "lastAction": None})
    plugin.create("bad", {"phase": "Paused", "pausedFrom": "Verifying", "pausedBy": "verb", "message": "paused"})
    for name, final, code in (
        ("good", {**succeeded(), "stage": None}, 0),
        ("bad", {"phase": "Failed", "stage": None, "message": "verify failed (GateFailed): error-rate Failed"}, 1),
    ):
        proc = subprocess.Popen(
            plugin.argv("status", name, "-n", plugin.namespace, "--watch", "--timeout", "60s"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=plugin.env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the watch is open once the first state is printed
            assert first.startswith(f"{name} "), first
            plugin.set_status(name, final)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == code, (name, first + out, err)
        assert f"{name} {final['phase']}: {final['message']}" in out
        assert "Traceback" not in err


def test_verbs_wait_for_the_operator_and_print_its_result(plugin: Plugin, operator: InClusterOperator) -> None:
    """The operator applies each verb; the plugin waits (a WATCH) for status.lastAction and prints its result."""
    plugin.create("release-42")  # its target does not exist: the operator keeps it Pending
    ns = plugin.namespace

    def pending() -> bool:
        return (plugin.get("release-42").get("status") or {}).get("phase") == "Pending"

    wait_for(pending, timeout=60, interval=0.5, what="the operator to take up release-42")
    for verb, expected in (
        ("pause", "release-42: pause: paused (phase Paused)"),
        ("resume", "release-42: resume: resumed (phase Pending)"),
        ("abort", "release-42: abort: aborted (phase Aborted)"),
        ("retry", "release-42: retry: retrying (attempt 2) (phase Pending)"),
    ):
        done = plugin(verb, "release-42", "-n", ns, "--timeout", "60s", timeout=90)
        assert done.returncode == 0, (verb, done.stdout, done.stderr, operator.tail())
        assert one_line(done.stdout) == expected
    again = plugin("retry", "release-42", "-n", ns)
    assert again.returncode == 2
    assert one_line(again.stderr).startswith("nothing to retry: release-42 is Pending")


DIGEST = "registry.example/lab/torghut@sha256:884bec35f7d24ef34c51240e697aa996bc134385be9f6936aa170880fe2d601e"


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_every_view_fits_the_terminal_and_shows_phase_stage_ready_and_age(plugin: Plugin, columns: int) -> None:
    plugin.create("release-42", {**awaiting_canary(), "image": DIGEST})
    plugin.env_extra = {"COLUMNS": str(columns)}
    for args in (["list"], ["status", "release-42"], ["history", "release-42"], ["why", "release-42"]):
        done = plugin(*args, "-n", plugin.namespace)
        assert done.returncode == 0, (args, done.stderr)
        lines = done.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns, (args, done.stdout)
        for needle in ("Promoting", "promote:canary", "False"):
            assert any(needle in line for line in lines), (args, needle, done.stdout)
        assert any(re.search(r"\b\d+[smhd]\b", line) for line in lines), (args, done.stdout)
        assert "…" not in done.stdout
        if args[0] in ("list", "status") and columns < 160:
            assert DIGEST not in done.stdout
            assert "torghut@884bec35f7d2" in done.stdout


def test_why_says_what_the_rollout_waits_for_and_which_verb_moves_it_on(plugin: Plugin) -> None:
    plugin.create("release-42", awaiting_canary())
    done = plugin("why", "release-42", "-n", plugin.namespace)
    assert done.returncode == 0, done.stderr
    fields = {line[:19].strip(): line[19:].strip() for line in done.stdout.splitlines() if line[:1].strip()}
    assert fields["Phase"] == "Promoting"
    assert fields["State"] == "waiting"
    assert fields["Reason"].startswith("AwaitingApproval (Ready), since ")
    assert fields["Do"] == "promote to accept, abort to roll back"
    assert fields["Next"].startswith(f"kubectl torghut promote release-42 -n {plugin.namespace}")
    as_json = json.loads(plugin("why", "release-42", "-n", plugin.namespace, "-o", "json").stdout)
    assert (as_json["reason"], as_json["next_verbs"]) == ("AwaitingApproval", ["promote", "abort"])

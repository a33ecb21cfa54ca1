"""The alert rules against Prometheus' own rule engine: `promtool check rules` and `promtool test rules`.

The unit tests in manifests/monitoring/tests/ feed synthetic series through the rules and assert, at given
times, exactly which alerts fire with which labels and annotations (what on-call reads). This module runs
them, checks each alert is shown both firing and quiet there (each severity of a staged alert firing), and
checks that the rule file, the PrometheusRule and the dashboard's queries are valid PromQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import TORGHUT_SERIES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "torghut-rollout-rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "torghut-rollout.json"
UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$check": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian: apt-get install prometheus); the alert rules cannot be checked")
    return path


def run_promtool(promtool: str, *args: str | Path) -> str:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def unit_test_cases() -> list[dict[str, Any]]:
    cases = []
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../torghut-rollout-rules.yaml"], f"{path.name} must test the rule file"
        cases.extend(document["tests"])
    return cases


def test_rule_file_passes_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", RULES)
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_prometheusrule_spec_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    """What the Prometheus Operator loads, checked on its own (not only through the verbatim-copy test)."""
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    extracted = tmp_path / "prometheusrule-spec.yaml"
    extracted.write_text(yaml.safe_dump(spec))
    run_promtool(promtool, "check", "rules", extracted)


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_alert_unit_tests_pass(promtool: str, path: Path) -> None:
    output = run_promtool(promtool, "test", "rules", path)
    assert "SUCCESS" in output


def test_unit_tests_exist() -> None:
    assert {p.name for p in UNIT_TESTS} >= {"signals.yaml", "routes.yaml", "rollouts.yaml"}


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    recorded: set[str] = set()
    for case in unit_test_cases():
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if not expected:
                quiet.add(check["alertname"])
            for alert in expected:
                firing.add((check["alertname"], alert["exp_labels"]["severity"]))
                assert alert.get("exp_annotations", {}).keys() == {"summary", "description"}
        for check in case.get("promql_expr_test", []):
            recorded.add(check["expr"].strip())
    alerts = {(rule["alert"], rule["labels"]["severity"]) for rule in rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts (and severities) never shown firing"
    assert {name for name, _ in alerts} - quiet == set(), "alerts never shown quiet"
    recordings = {rule["record"] for rule in rules() if "record" in rule}
    assert recordings <= recorded, "recording rules without a promql_expr_test"


def test_zero_signal_alert_escalates_warning_then_critical() -> None:
    """The staged thresholds: 3 consecutive zero-signal windows warn, 6 page."""
    stages = {
        rule["labels"]["severity"]: rule["expr"] for rule in rules() if rule.get("alert") == "TorghutNoSignalStreak"
    }
    assert stages == {
        "warning": "torghut_trading_no_signal_streak >= 3",
        "critical": "torghut_trading_no_signal_streak >= 6",
    }
    fired_at: dict[str, list[str]] = {}
    for case in unit_test_cases():
        for check in case.get("alert_rule_test", []):
            if check["alertname"] == "TorghutNoSignalStreak":
                severities = sorted(a["exp_labels"]["severity"] for a in check.get("exp_alerts") or [])
                fired_at[check["eval_time"]] = severities
    assert ["warning"] in fired_at.values()
    assert ["critical", "warning"] in fired_at.values()
    assert [] in fired_at.values()


def test_every_alert_says_what_to_do() -> None:
    for rule in rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert len(annotations["description"].split()) >= 15, f"{rule['alert']}: describe what to do"


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each dashboard query, with its Grafana variables filled in, parsed by Prometheus as a recording rule."""
    dashboard = json.loads(DASHBOARD.read_text())
    recording = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown Grafana variable in {target['expr']!r}"
            recording.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    assert recording
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    output = run_promtool(promtool, "check", "rules", rule_file)
    assert f"SUCCESS: {len(recording)} rules found" in output


def test_series_named_in_rules_and_dashboard_exist() -> None:
    """A misspelt series makes an alert that never fires: every torghut_* name must be a known series."""
    from prometheus_client.metrics import MetricWrapperBase  # noqa: PLC0415

    from torghut_operator.shell import metrics  # noqa: PLC0415

    known = {
        # Torghut's own series (torghut.md section 4)
        *(f"torghut_trading_{name}" for name in TORGHUT_SERIES),
        "torghut_rollout_gate_value",  # planned gate gauge {namespace, name, check}
        *(rule["record"] for rule in rules() if "record" in rule),
    }
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
                known.update(family.name + suffix for suffix in suffixes)
    texts = [rule["expr"] for rule in rules()]
    texts += [text for rule in rules() for text in rule.get("annotations", {}).values()]
    texts += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    used = {name for text in texts for name in re.findall(r"\btorghut(?:_trading|_rollout|:)[a-z0-9_:]*", text)}
    assert used, "no series found: the pattern is wrong"
    assert used - known == set()

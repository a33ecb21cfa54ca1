"""The README's pictures: the plugin's own views (``status``, ``list``, ``history``, ``why``) and the evidence
report, rendered by the plugin's render functions at 80, 100 and 160 columns and exported as SVG by rich.

The rollout is the sample ``manifests/samples/promotion-paper-to-live.yaml`` with a status as the operator writes
it on a second attempt that waits for a human at the ``live`` step, at a fixed time, so the files change only when
a view does. ``make screens`` rewrites them; ``tests/unit/test_screens.py`` fails when one is stale.

    python -m torghut_localstack.screens docs/screens
"""

from __future__ import annotations

import argparse
import copy
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, RenderableType
from rich.markdown import Markdown
from rich.terminal_theme import MONOKAI

from torghut_operator.cli import views as cli_views
from torghut_operator.core.timefmt import format_time

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "promotion-paper-to-live.yaml"
OUT = REPO / "docs" / "screens"
WIDTHS = (80, 100, 160)
NOW = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def _ago(minutes: float) -> str:
    return format_time(NOW - timedelta(minutes=minutes))


def _measurement(
    phase: str, minutes: float, value: str | None, message: str, samples: int | None = None
) -> dict[str, Any]:
    m: dict[str, Any] = {"phase": phase, "at": _ago(minutes), "message": message}
    if value is not None:
        m["value"] = value
    if samples is not None:
        m["samples"] = samples
    return m


FALLBACK_QUERY = (
    "sum(increase(torghut_trading_execution_fallback_total[15m]))\n"
    "  / sum(increase(torghut_trading_execution_requests_total[15m]))\n"
)


def _status() -> dict[str, Any]:
    """Attempt 2, step ``live`` applied and re-verifying: fallback-ratio has too few samples, so it waits."""
    flowing = [_measurement("Successful", m, v, f"value {v} >= 1") for m, v in ((44, "37"), (43, "41"), (42, "52"))]
    few = "value 0.08 (12 samples) below minSamples 20: not enough evidence"
    fallback = [_measurement("Inconclusive", m, "0.08", few, 12) for m in (9, 8, 7)]
    loss = [
        _measurement("Successful", m, v, f"value {v} <= 0.02") for m, v in ((9, "0.004"), (8, "0.004"), (7, "0.005"))
    ]
    return {
        "phase": "Promoting",
        "stage": "promote:live",
        "message": "live: 1 check Inconclusive (fallback-ratio); promote to accept, abort to roll back",
        "attempt": 2,
        "image": "registry.ide-newton.ts.net/lab/torghut@sha256:884bec35f7d24ef34c51240e697aa996bc134385be9f6936aa170880fe2d601e",
        "previousImage": "registry.ide-newton.ts.net/lab/torghut@sha256:1f0c4b7e9a2d8c3b5e6f7a8091b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        "startedAt": _ago(50),
        "phaseStartedAt": _ago(20),
        "awaitingApproval": True,
        "promotion": {
            "step": 1,
            "stepName": "live",
            "applied": True,
            "approved": True,
            "patchedAt": _ago(12),
            "soakSince": _ago(30),
            "completed": ["paper"],
        },
        "restore": {
            "image": "registry.ide-newton.ts.net/lab/torghut@sha256:1f0c4b7e9a2d8c3b5e6f7a8091b2c3d4e5f60718293a4b5c6d7e8f9012345678",
            "env": {"TRADING_MODE": "paper"},
            "unset": ["TRADING_AUTONOMY_ALLOW_LIVE_PROMOTION"],
        },
        "checks": [
            {
                "name": "decisions-flowing",
                "stage": "verify",
                "provider": "prometheus",
                "query": "sum(increase(torghut_trading_decisions_total[10m]))",
                "threshold": ">= 1",
                "phase": "Successful",
                "successful": 3,
                "message": "3/3 measurements successful; last: value 52 >= 1",
                "measurements": flowing,
            },
            {
                "name": "fallback-ratio",
                "stage": "promote:live",
                "provider": "prometheus",
                "query": FALLBACK_QUERY,
                "threshold": "<= 0.25",
                "phase": "Inconclusive",
                "inconclusive": 3,
                "message": f"3 inconclusive measurement(s) (limit 0): {few}",
                "measurements": fallback,
            },
            {
                "name": "daily-loss",
                "stage": "promote:live",
                "provider": "prometheus",
                "query": "max(torghut_trading_capital_daily_loss_ratio)",
                "threshold": "<= 0.02",
                "phase": "Successful",
                "successful": 3,
                "message": "3/3 measurements successful; last: value 0.005 <= 0.02",
                "measurements": loss,
            },
        ],
        "lastAction": {"verb": "promote", "at": _ago(13), "result": "step live approved"},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": _ago(95),
                "reason": "AwaitingApproval",
                "message": "fallback-ratio Inconclusive",
            },
            {"type": "Migrated", "status": "True", "lastTransitionTime": _ago(48), "reason": "JobSucceeded"},
            {"type": "Deployed", "status": "True", "lastTransitionTime": _ago(46), "reason": "Available"},
            {"type": "Verified", "status": "True", "lastTransitionTime": _ago(42), "reason": "ChecksPassed"},
            {
                "type": "Promoted",
                "status": "False",
                "lastTransitionTime": _ago(30),
                "reason": "AwaitingApproval",
                "message": "fallback-ratio Inconclusive: promote to accept, abort to roll back",
            },
        ],
    }


def _event(minutes: float, reason: str, message: str, type_: str = "Normal") -> dict[str, Any]:
    return {"type": type_, "reason": reason, "message": message, "lastTimestamp": _ago(minutes), "count": 1}


def events() -> list[dict[str, Any]]:
    """The events the operator posts over the two attempts (the first rolled back on zero decisions)."""
    return [
        _event(95, "Migrating", "Pending -> Migrating: migration Job torghut-go-live-migrate-3f2a9c1d-1"),
        _event(93, "MigrationJobSucceeded", "migration Job torghut-go-live-migrate-3f2a9c1d-1 completed"),
        _event(93, "Deploying", "Migrating -> Deploying: rolling out torghut@sha256:884bec35f7d2"),
        _event(91, "Verifying", "Deploying -> Verifying: 1 check, 3 measurements 1m apart"),
        _event(
            87,
            "CheckFailed",
            "decisions-flowing Failed: value 0 below min 1 (no_signal_reason cursor_tail_stable)",
            "Warning",
        ),
        _event(87, "RollingBack", "Verifying -> RollingBack: verify failed (GateFailed)", "Warning"),
        _event(85, "RolledBack", "RollingBack -> RolledBack: previous image available", "Warning"),
        _event(52, "Verb", "retry: retrying (attempt 2)"),
        _event(52, "Pending", "RolledBack -> Pending: retry: attempt 2"),
        _event(49, "Migrating", "Pending -> Migrating: migration Job torghut-go-live-migrate-3f2a9c1d-2"),
        _event(48, "MigrationJobSucceeded", "migration Job torghut-go-live-migrate-3f2a9c1d-2 completed"),
        _event(46, "Deploying", "Migrating -> Deploying: rolling out torghut@sha256:884bec35f7d2"),
        _event(45, "Verifying", "Deploying -> Verifying: 1 check, 3 measurements 1m apart"),
        _event(42, "Promoting", "Verifying -> Promoting: step paper"),
        _event(40, "StepApplied", "step paper applied: TRADING_ENABLED=true, TRADING_MODE=paper"),
        _event(31, "StepPassed", "step paper verified"),
        _event(30, "AwaitingApproval", "step live awaits approval: promote to apply it"),
        _event(12, "StepApplied", "step live applied: TRADING_AUTONOMY_ALLOW_LIVE_PROMOTION=true, TRADING_MODE=live"),
        _event(
            7,
            "AwaitingApproval",
            "Inconclusive: fallback-ratio; promote to accept, abort to roll back",
            "Warning",
        ),
    ]


def rollout() -> cli_views.Rollout:
    obj = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"].update({"uid": "5b0c", "resourceVersion": "1", "creationTimestamp": _ago(97)})
    from torghut_operator.core.api.spec import TorghutRolloutSpec  # noqa: PLC0415

    obj["status"] = {"specHash": TorghutRolloutSpec.model_validate(obj["spec"]).spec_hash(), **_status()}
    return cli_views.Rollout.from_object(obj)


SQL_SAMPLE = REPO / "manifests" / "samples" / "sql-migration-expect.yaml"


def backfilling() -> cli_views.Rollout:
    """The SQL sample in its migrate stage, 45% through a backfill that waits on lock queues right now."""
    from torghut_operator.core.api.spec import TorghutRolloutSpec  # noqa: PLC0415

    obj = next(d for d in yaml.safe_load_all(SQL_SAMPLE.read_text()) if d and d.get("kind") == "TorghutRollout")
    obj["metadata"].update({"uid": "7d1e", "resourceVersion": "1", "creationTimestamp": _ago(14)})
    backfill = {
        "file": "0004_route_provenance_backfill.sql",
        "table": "public.executions",
        "rowsDone": 4_512_000,
        "rowsTotal": 10_000_000,
        "batches": 903,
        "batchSize": 6_400,
        "rowsPerSecond": 12_480.0,
        "etaSeconds": 440,
        "throttled": "2 lock wait(s) on public.executions",
        "finished": False,
        "updatedAt": _ago(0.1),
    }
    text = (
        "migrating: backfill 0004_route_provenance_backfill.sql: 45% (4,512,000 / 10,000,000 rows), 12,480 rows/s, "
        "ETA 7m20s; throttled: 2 lock wait(s) on public.executions"
    )
    obj["status"] = {
        "specHash": TorghutRolloutSpec.model_validate(obj["spec"]).spec_hash(),
        "phase": "Migrating",
        "stage": "migrate",
        "message": text,
        "image": obj["spec"]["target"]["image"],
        "previousImage": "registry.ide-newton.ts.net/lab/torghut@sha256:1f0c4b7e9a2d8c3b5e6f7a8091b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        "startedAt": _ago(13),
        "phaseStartedAt": _ago(13),
        "migration": {"mode": "sql", "backfill": backfill},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": _ago(13),
                "reason": "Progressing",
                "message": text,
            },
            {"type": "Migrated", "status": "False", "lastTransitionTime": _ago(13), "reason": "Migrating"},
        ],
    }
    return cli_views.Rollout.from_object(obj)


def _others() -> list[dict[str, Any]]:
    """Two more rollouts for the list view."""
    done = {
        "metadata": {"name": "torghut-2026-11-20", "namespace": "torghut", "creationTimestamp": _ago(4 * 24 * 60)},
        "spec": {"target": {"image": "registry.ide-newton.ts.net/lab/torghut@sha256:1f0c4b7e9a2d8c3b5e6f7a80"}},
        "status": {
            "phase": "Succeeded",
            "message": "every stage passed",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
        },
    }
    blocked = {
        "metadata": {"name": "torghut-hotfix-7", "namespace": "torghut", "creationTimestamp": _ago(3)},
        "spec": {"target": {"image": "registry.ide-newton.ts.net/lab/torghut:v0.42.1-hotfix.7"}},
        "status": {
            "phase": "Pending",
            "message": "waiting: TorghutRollout torghut-go-live is rolling out Deployment/torghut",
            "conditions": [{"type": "Ready", "status": "False", "reason": "Blocked"}],
        },
    }
    return [done, blocked]


def views() -> dict[str, Callable[[int], RenderableType]]:
    """Each picture by name, as a function of the terminal width."""
    r = rollout()
    entries = cli_views.history(r, events())
    rows = [cli_views.rollout_row(r.raw, NOW), *(cli_views.rollout_row(o, NOW) for o in _others())]
    rows.sort(key=lambda row: row["name"])

    def report(_: int) -> RenderableType:
        from torghut_operator.evidence.report import render_report  # noqa: PLC0415 (sqlalchemy: load on use)

        text = render_report(
            name=r.name, namespace=r.namespace, spec=r.spec, status=r.status, measurements=[], decisions=[], facts=None
        )
        return Markdown(text)

    return {
        "status": lambda w: cli_views.render_status(r, now=NOW, width=w),
        "list": lambda _: cli_views.render_list(rows, all_namespaces=True),
        "history": lambda w: cli_views.render_history(r, entries, NOW, w),
        "why": lambda _: cli_views.render_why(cli_views.explain(r, NOW), NOW, name=r.name, namespace=r.namespace),
        "report": report,
        "backfill": lambda w: cli_views.render_status(backfilling(), now=NOW, width=w),
    }


def command_line(view: str) -> str:
    return {
        "status": "kubectl torghut status torghut-go-live -n torghut",
        "list": "kubectl torghut list -A",
        "history": "kubectl torghut history torghut-go-live -n torghut",
        "why": "kubectl torghut why torghut-go-live -n torghut",
        "report": "kubectl torghut report torghut-go-live -n torghut",
        "backfill": "kubectl torghut status torghut-route-grant-patch -n torghut",
    }[view]


def render(view: str, width: int) -> tuple[str, str]:
    """(SVG, plain text) of one view at one width."""
    console = Console(record=True, width=width, color_system="truecolor", force_terminal=True, file=io.StringIO())
    console.print(f"$ {command_line(view)}", style="bold", highlight=False)
    console.print(views()[view](width))
    text = console.export_text(clear=False)
    svg = console.export_svg(title=f"{command_line(view)}  ({width} columns)", theme=MONOKAI)
    return svg, text


def pictures() -> dict[str, str]:
    """File name -> SVG of every picture: each view at every width; the report and a running backfill at 100."""
    out: dict[str, str] = {}
    for view in ("status", "list", "history", "why"):
        for width in WIDTHS:
            out[f"{view}-{width}.svg"] = render(view, width)[0]
    out["report-100.svg"] = render("report", 100)[0]
    out["backfill-100.svg"] = render("backfill", 100)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out", nargs="?", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, svg in pictures().items():
        (out / name).write_text(svg)
    print(f"wrote {len(pictures())} pictures to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

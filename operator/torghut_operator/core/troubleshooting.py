"""The troubleshooting table: what each reason means and what to do. One source: ``kubectl torghut why`` quotes it,
and the README's Troubleshooting table is checked against :func:`markdown_table` by a unit test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Advice:
    label: str
    """The first cell of the README's row (Markdown)."""
    reason: str
    """The condition or event reason it matches ("" for a row matched by ``message`` only)."""
    means: str
    do: str
    verbs: tuple[str, ...] = ()
    """The verbs that move the rollout on, in the order to try them."""
    condition_types: tuple[str, ...] = ()
    """Matches only a condition of these types (empty: any)."""
    message: str = ""
    """Matches only when the condition's or check's message contains this text."""


TABLE: tuple[Advice, ...] = (
    Advice(
        "`Blocked`",
        "Blocked",
        "another rollout of the same target is running (named in the message)",
        "wait, or `abort` the other one",
    ),
    Advice(
        "`MigrationFailed`",
        "MigrationFailed",
        "the Job failed (its reason: `BackoffLimitExceeded`, `DeadlineExceeded`; its pods are kept for "
        "`kubectl logs`) or a SQL file failed / changed after being applied (named); on `Deployed`: the SQL "
        "catch-up failed",
        "fix, then `retry` (a corrected repeatable file is applied again)",
        ("retry",),
    ),
    Advice(
        "`GateFailed` (Migrated)",
        "GateFailed",
        "a postcondition does not hold, e.g. `torghut_app lacks INSERT on research_runs` or `tables postgres "
        "creates later would lack INSERT for torghut_app`",
        "apply the grant pack, `retry`",
        ("retry",),
        ("Migrated",),
    ),
    Advice(
        "`GateFailed` (Verified/Promoted)",
        "GateFailed",
        "a check failed more than `failureLimit`; the message has value, threshold, query",
        "investigate; rolled back if `rollback.onFailure`",
        ("retry",),
    ),
    Advice(
        "`gate DSN role … is a superuser` / `is a member of pg_…_server_…`",
        "",
        "the gate DSN can write, so gates refuse it",
        "point `spec.database.secretRef` at a read-only role; give the ledger `ledgerSecretRef`",
        ("retry",),
        message="gate DSN role",
    ),
    Advice(
        "`schema lacks …` (GateError)",
        "",
        "a gate reads a column or table this database does not have yet; the message names the Torghut migration "
        "that adds it",
        "run that migration first, or override the check (e.g. `dryRun: true`) until it has run",
        ("retry",),
        message="schema lacks",
    ),
    Advice(
        "`GateError`",
        "GateError",
        "measurements errored more than `consecutiveErrorLimit` times in a row (database or Prometheus unreachable, "
        "bad query, a malformed answer, a refused query or gate DSN role, no answer within the check's timeout)",
        "fix access, `retry`",
        ("retry",),
    ),
    Advice(
        "`AwaitingApproval`",
        "AwaitingApproval",
        "a check is Inconclusive (no data, too few samples) or a step needs a human",
        "`promote` to accept, `abort` to roll back",
        ("promote", "abort"),
    ),
    Advice(
        "`MissingEvidence`",
        "MissingEvidence",
        "no approved `research_promotions` row for the step's mode created since the attempt started (or within "
        "`requiredPromotion.window`), for `candidateId` when set; the message counts the rows seen that did not "
        "count (older, another candidate, denied)",
        "let the research lane approve; it re-checks every interval. `promote` cannot waive it",
        ("abort",),
    ),
    Advice(
        "`Soaking`",
        "Soaking",
        "the step's `requiredSoakTime` has not passed since the previous stage was verified",
        "wait",
    ),
    Advice(
        "`Paused`",
        "Paused",
        "the `pause` verb or `spec.paused: true` stopped it where it stood (a rollback is never paused)",
        "`resume` (after the verb), or set `spec.paused: false`",
        ("resume",),
    ),
    Advice(
        "`RestoreFailed`",
        "RestoreFailed",
        "a rollback could not put the previous image/env back in time: the target **may still trade on the new "
        "image or live env**",
        "look at the target now; fix and `retry` (it restores first) or restore by hand",
        ("retry",),
    ),
    Advice(
        "`RollbackDisabled`",
        "RollbackDisabled",
        "`rollback.onFailure: false`: the trading env was restored, the new image left running on purpose",
        "`retry`, or roll the image back by hand",
        ("retry",),
    ),
    Advice(
        "`ReconcileError`",
        "ReconcileError",
        "a turn failed for a reason retrying alone will not fix; the message names it",
        "read the operator log; fix and the next turn clears it",
    ),
    Advice(
        "`ProgressDeadlineExceeded`",
        "ProgressDeadlineExceeded",
        "the new image did not become available in time",
        "check pods; rolled back if enabled",
        ("retry",),
    ),
    Advice(
        "`VerifyTimeout`",
        "VerifyTimeout",
        "checks not passed within `verify.timeout`",
        "read the checks' messages",
        ("retry",),
    ),
    Advice(
        "`InvalidSpec` event",
        "InvalidSpec",
        "the spec parses at admission but not in the operator (CEL that does not compile, bad JSONPath)",
        "fix the spec",
    ),
    Advice(
        "`LedgerWriteFailed` event",
        "LedgerWriteFailed",
        "the evidence ledger could not be written",
        "check database access; it catches up by itself",
    ),
)


def advice_for(reason: str, condition_type: str | None = None, message: str = "") -> Advice | None:
    """The row for a reason: a row matched by its message first (it is more specific), then by reason and
    condition type, then by reason alone."""
    for row in TABLE:
        if row.message and row.message in message:
            return row
    candidates = [row for row in TABLE if row.reason and row.reason == reason]
    for row in candidates:
        if row.condition_types and condition_type in row.condition_types:
            return row
    return next((row for row in candidates if not row.condition_types), None)


def markdown_table() -> str:
    """The README's Troubleshooting table, exactly."""
    lines = ["| reason | means | do |", "|---|---|---|"]
    lines += [f"| {row.label} | {row.means} | {row.do} |" for row in TABLE]
    return "\n".join(lines)

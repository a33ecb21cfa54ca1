"""Which Torghut migration adds which table and column, to turn "does not exist" into "schema too old".

Pure. A gate query that reads a column or table the database does not have yet is an Error naming what is
missing and, where known, the Torghut migration that adds it, e.g. ``schema lacks
research_promotions.decision_action (added by Torghut migration 0011_autonomy_lifecycle_and_promotion_audit)``.
Facts from Torghut's migration chain (proompteng/lab services/torghut/migrations/versions).
"""

from __future__ import annotations

import re
from typing import Final

M0006: Final = "0006_autonomy_ledger_and_execution_route"
M0011: Final = "0011_autonomy_lifecycle_and_promotion_audit"
M0026: Final = "0026_strategy_factory_research_objects"

KNOWN_TABLES: Final[dict[str, str]] = {
    "research_runs": M0006,
    "research_candidates": M0006,
    "research_fold_metrics": M0006,
    "research_stress_metrics": M0006,
    "research_promotions": M0006,
    "research_attempts": M0026,
    "research_cost_calibrations": M0026,
    "research_sequential_trials": M0026,
    "research_validation_tests": M0026,
}
"""Table -> the migration that creates it."""

KNOWN_COLUMNS: Final[dict[str, tuple[str, str]]] = {
    "execution_expected_adapter": ("executions", M0006),
    "execution_actual_adapter": ("executions", M0006),
    "execution_fallback_reason": ("executions", M0006),
    "execution_fallback_count": ("executions", M0006),
    "decision_action": ("research_promotions", M0011),
    "decision_rationale": ("research_promotions", M0011),
    "evidence_bundle": ("research_promotions", M0011),
    "recommendation_trace_id": ("research_promotions", M0011),
    "lifecycle_role": ("research_candidates", M0011),
    "lifecycle_status": ("research_candidates", M0011),
    "recommendation_bundle": ("research_candidates", M0011),
    "discovery_mode": ("research_runs", M0026),
    "generator_family": ("research_runs", M0026),
}
"""Column -> (its table, the migration that adds it). Column names are unique enough across Torghut's tables for
this purpose; a qualifier in the error that names another table wins."""

_COLUMN = re.compile(r'column "?(?:([A-Za-z_][\w$]*)"?\.)?"?([A-Za-z_][\w$]*)"? does not exist')
_RELATION = re.compile(r'relation "(?:[A-Za-z_][\w$]*\.)?([A-Za-z_][\w$]*)" does not exist')


def missing_column(primary: str) -> str | None:
    """For Postgres' UndefinedColumn primary message (``column p.decision_action does not exist``), what the
    schema lacks; None when the message is not of that form."""
    found = _COLUMN.search(primary)
    if found is None:
        return None
    qualifier, column = found.group(1), found.group(2)
    known = KNOWN_COLUMNS.get(column)
    if known is not None and (qualifier is None or qualifier not in KNOWN_TABLES or qualifier == known[0]):
        table, migration = known
        return f"schema lacks {table}.{column} (added by Torghut migration {migration})"
    where = f"{qualifier}.{column}" if qualifier in KNOWN_TABLES or qualifier == "executions" else column
    return f"schema lacks column {where} (not added by any Torghut migration this database has run)"


def missing_table(primary: str) -> str | None:
    """For Postgres' UndefinedTable primary message (``relation "research_attempts" does not exist``), what
    the schema lacks; None when the message is not of that form."""
    found = _RELATION.search(primary)
    if found is None:
        return None
    table = found.group(1)
    migration = KNOWN_TABLES.get(table)
    if migration is not None:
        return f"schema lacks table {table} (added by Torghut migration {migration})"
    return f"schema lacks table {table} (not created by any Torghut migration this database has run)"

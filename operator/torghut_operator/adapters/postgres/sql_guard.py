"""Which SQL a gate may run, decided with PostgreSQL's own parser (pglast, libpg_query): pure, no I/O.

A READ ONLY transaction is not enough on its own: ``COPY ... TO PROGRAM`` and ``COPY ... TO 'file'`` run
under a privileged role, and functions that open a session of their own (``dblink``) write outside the
transaction. So, before a gate query reaches the database, ``refusal`` accepts only

* exactly one statement, a read: ``SELECT``, ``VALUES``, ``TABLE``, set operations, ``WITH ... SELECT``;
* no data-modifying ``WITH`` (``INSERT``/``UPDATE``/``DELETE``/``MERGE`` in a CTE), no ``SELECT INTO`` (creates
  a table), no ``FOR UPDATE``/``FOR SHARE`` (row locks);
* no call of a function that escapes the transaction or touches the server (``DENIED_FUNCTIONS``) or of one
  in the operator's extra denylist.

Everything else (``COPY``, DML, DDL, ``SET``, ``CALL``, ``DO``, ``LOCK``, ``EXPLAIN``, transaction control...)
is refused with the reason. Function names are matched on their last part, case-insensitively, so
``pg_catalog.set_config`` and ``public.dblink_exec`` are caught too; ``name*`` matches a prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

DENIED_FUNCTIONS: dict[str, str] = {
    "dblink*": "opens a session of its own, outside the read-only transaction",
    "postgres_fdw*": "reaches another server",
    "lo_*": "reads or writes large objects or server files",
    "pg_read_file": "reads server files",
    "pg_read_binary_file": "reads server files",
    "pg_ls_*": "lists server directories",
    "pg_stat_file": "reads server files",
    "pg_file_*": "writes server files",
    "pg_terminate_backend": "ends other sessions",
    "pg_cancel_backend": "cancels other sessions' queries",
    "pg_reload_conf": "changes the server's state",
    "pg_rotate_logfile": "changes the server's state",
    "pg_switch_wal": "changes the server's state",
    "pg_promote": "changes the server's state",
    "pg_create_restore_point": "changes the server's state",
    "pg_stat_reset*": "changes the server's state",
    "pg_logical_emit_message": "writes to the WAL",
    "pg_replication_*": "changes replication state",
    "pg_create_*_replication_slot": "changes replication state",
    "pg_drop_replication_slot": "changes replication state",
    "set_config": "changes session settings (e.g. transaction_read_only)",
    "pg_advisory*": "takes advisory locks that outlive the transaction",
    "pg_try_advisory*": "takes advisory locks that outlive the transaction",
    "txid_current*": "assigns a transaction id",
    "pg_current_xact_id*": "assigns a transaction id",
    "pg_export_snapshot": "controls transactions",
    "nextval": "advances a sequence (a write that no rollback undoes)",
    "setval": "writes a sequence",
    "pg_notify": "sends notifications",
    "query_to_xml*": "runs SQL from a string, out of this check's sight",
    "cursor_to_xml*": "runs SQL from a cursor, out of this check's sight",
}
"""Function patterns a gate query may not call, with the reason (``*`` matches any suffix)."""

_STATEMENT_NAMES = {
    "CopyStmt": "COPY",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW",
    "CallStmt": "CALL",
    "DoStmt": "DO",
    "LockStmt": "LOCK",
    "TransactionStmt": "transaction control",
    "ExplainStmt": "EXPLAIN",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "TruncateStmt": "TRUNCATE",
    "GrantStmt": "GRANT",
    "NotifyStmt": "NOTIFY",
    "ListenStmt": "LISTEN",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "VacuumStmt": "VACUUM",
    "CreateStmt": "CREATE TABLE",
    "IndexStmt": "CREATE INDEX",
}
_DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def statement_name(node: ast.Node) -> str:
    """``COPY``, ``INSERT``, ``CREATE TABLE``... for a statement node (DDL by its node name otherwise)."""
    name = type(node).__name__
    if name in _STATEMENT_NAMES:
        return _STATEMENT_NAMES[name]
    words = re.findall(r"[A-Z][a-z]*", name.removesuffix("Stmt"))
    return " ".join(words).upper() or name


def refusal(sql: str, denied: Iterable[str] = ()) -> str | None:
    """Why ``sql`` may not run as a gate query, or None when it is a single read statement. ``denied``: extra
    function patterns (``name`` or ``prefix*``) refused on top of DENIED_FUNCTIONS."""
    try:
        statements = parse_sql(sql)
    except ParseError as error:
        return f"the query does not parse: {error}"
    if not statements:
        return "the query is empty"
    if len(statements) > 1:
        return f"a gate query must be a single statement; {len(statements)} were given"
    top = statements[0].stmt
    if top is None:
        return "the query is empty"
    if not isinstance(top, ast.SelectStmt):
        return f"a gate query must be a read (SELECT, VALUES or WITH ... SELECT); {statement_name(top)} is refused"
    patterns = {**DENIED_FUNCTIONS, **{pattern.strip().lower(): "is on the operator's denylist" for pattern in denied}}
    for node in _nodes(top):
        if isinstance(node, _DML):
            return f"a data-modifying WITH ({statement_name(node)}) is refused: a gate query only reads"
        if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            return "SELECT INTO is refused: it creates a table"
        if isinstance(node, ast.SelectStmt) and node.lockingClause:
            return "FOR UPDATE/FOR SHARE is refused: a gate query takes no row locks"
        if isinstance(node, ast.FuncCall):
            name = _function_name(node)
            reason = _denied(name, patterns)
            if reason is not None:
                return f"function {name}() is refused: it {reason}"
        if not isinstance(node, ast.SelectStmt) and type(node).__name__.endswith("Stmt") and not _is_harmless(node):
            return f"{statement_name(node)} inside a gate query is refused"
    return None


def _is_harmless(node: ast.Node) -> bool:
    # Statement-like nodes that may appear inside a SELECT: none so far (RawStmt is never nested).
    return isinstance(node, ast.RawStmt)


def _function_name(call: ast.FuncCall) -> str:
    parts = [part.sval or "" for part in call.funcname or () if isinstance(part, ast.String)]
    return ".".join(parts) if parts else "?"


def _denied(name: str, patterns: dict[str, str]) -> str | None:
    last = name.rsplit(".", 1)[-1].lower()
    for pattern, reason in patterns.items():
        if not pattern:
            continue
        if "*" in pattern:
            head, _, tail = pattern.partition("*")
            if last.startswith(head) and last.endswith(tail) and len(last) >= len(head) + len(tail):
                return reason
        elif last == pattern:
            return reason
    return None


def _nodes(node: Any) -> Iterator[ast.Node]:
    """Every AST node under ``node`` (itself included), depth first, without recursion limits."""
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            stack.extend(getattr(item, attr) for attr in getattr(type(item), "__slots__", ()))
        elif isinstance(item, list | tuple):
            stack.extend(item)

"""Kopf's line for each success of a watch handler or timer is not logged unless --verbose (app.quiet): those ran
on every event of every rollout, Job and target, and every 30 s for every rollout, and said nothing. Failures, and
every other line, are kept."""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import kopf
import pytest
from kopf._core.actions.loggers import LocalObjectLogger, ObjectLogger

import torghut_operator.__main__ as cli
from torghut_operator.app import handlers
from torghut_operator.app.quiet import KOPF_OBJECTS, RoutineSuccesses, quiet_routine_successes

pytestmark = pytest.mark.unit

BODY = kopf.Body(
    cast(
        kopf.RawBody,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "torghut", "namespace": "trading"}},
    )
)


def _kopf_handlers() -> dict[str, Any]:
    registry = kopf.get_default_registry()
    found = [*registry._watching.get_all_handlers(), *registry._spawning.get_all_handlers()]
    return {str(h.id): h for h in found}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Any:
    logger = logging.getLogger(KOPF_OBJECTS)
    saved = (logger.filters[:], logger.level)
    capture = Lines()
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture.lines
    finally:
        logger.removeHandler(capture)
        logger.filters[:], logger.level = saved


def test_the_routine_handlers_are_exactly_the_operators_watch_handlers_and_timers() -> None:
    """A new on.event handler or timer is routine too (or says why not here)."""
    routine = {i for i, h in _kopf_handlers().items() if not str(h).startswith("Daemon ")}
    assert routine == set(handlers.ROUTINE_HANDLERS)


def test_kopfs_success_lines_of_routine_handlers_are_dropped_and_nothing_else(lines: list[str]) -> None:
    quiet_routine_successes(handlers.ROUTINE_HANDLERS)
    local = LocalObjectLogger(body=BODY, settings=kopf.OperatorSettings())
    posting = ObjectLogger(body=BODY, settings=kopf.OperatorSettings())
    for name, handler in _kopf_handlers().items():
        logger = local if name in handlers.ROUTINE_HANDLERS and not str(handler).startswith("Timer") else posting
        logger.info(f"{handler} succeeded.")  # Kopf's own wording (kopf._core.actions.execution)
        logger.error(f"{handler} failed with an exception and will try again in 1 seconds: boom")
    posting.info("Handler 'finalize' succeeded.")
    posting.info("Timer 'route_visibility' succeeded. Not quite.")
    succeeded = [line for line in lines if line.endswith("succeeded.")]
    assert succeeded == ["Daemon 'drive' succeeded.", "Handler 'finalize' succeeded."]
    assert sum("failed with an exception" in line for line in lines) == len(_kopf_handlers())
    assert "Timer 'route_visibility' succeeded. Not quite." in lines


def test_quieting_twice_installs_one_filter() -> None:
    logger = logging.getLogger(KOPF_OBJECTS)
    saved = logger.filters[:]
    try:
        quiet_routine_successes(["a"])
        quiet_routine_successes(["b"])
        assert sum(isinstance(f, RoutineSuccesses) for f in logger.filters) == 1
    finally:
        logger.filters[:] = saved


@pytest.mark.parametrize("verbose", [False, True])
def test_the_operator_quiets_routine_successes_unless_verbose(monkeypatch: pytest.MonkeyPatch, verbose: bool) -> None:
    logger = logging.getLogger(KOPF_OBJECTS)
    saved = logger.filters[:]
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    # run() keeps the kubernetes client out of the operator process: not out of this one after the test.
    monkeypatch.setitem(sys.modules, "kubernetes", sys.modules.get("kubernetes"))
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    try:
        logger.filters[:] = []
        cli.run(namespace=None, liveness="http://127.0.0.1:0/healthz", log_format="plain", verbose=verbose)
        assert any(isinstance(f, RoutineSuccesses) for f in logger.filters) is not verbose
        # No line per HTTP or Prometheus measurement (httpx logs each request, URL and all, at INFO).
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)  # nor per liveness probe
    finally:
        logger.filters[:] = saved

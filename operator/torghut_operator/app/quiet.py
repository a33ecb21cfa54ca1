"""Kopf logs one INFO line each time a handler succeeds. For the operator's watch handlers (every event of every
rollout, migration Job and target) and its timers (every rollout, every 30 s, for as long as it exists) those lines
were most of the log and said nothing an on-call needs: ``Handler 'deployment_changed' succeeded.`` once per
Deployment event, ``Timer 'route_visibility' succeeded.`` twice a minute per rollout, finished or not. They are
dropped unless ``--verbose``; their failures, Kopf's other lines and the operator's own are kept."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

KOPF_OBJECTS = "kopf.objects"
"""The logger Kopf writes per-object lines to (``kopf._core.actions.loggers``)."""


class RoutineSuccesses(logging.Filter):
    """Drops ``Handler '<id>' succeeded.`` and ``Timer '<id>' succeeded.`` for the given handler ids, nothing else."""

    def __init__(self, handler_ids: Iterable[str]) -> None:
        super().__init__()
        names = "|".join(re.escape(i) for i in sorted(handler_ids))
        self._line = re.compile(rf"(?:Handler|Timer) '(?:{names})' succeeded\.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and self._line.fullmatch(str(record.msg)))


def quiet_routine_successes(handler_ids: Iterable[str]) -> RoutineSuccesses:
    """Install the filter on Kopf's per-object logger (idempotent: one filter at a time)."""
    logger = logging.getLogger(KOPF_OBJECTS)
    for old in [f for f in logger.filters if isinstance(f, RoutineSuccesses)]:
        logger.removeFilter(old)
    routine = RoutineSuccesses(handler_ids)
    logger.addFilter(routine)
    return routine

"""Durations in the Go/Kubernetes form users already write in Argo Rollouts and Flagger: ``30s``, ``5m``,
``1h30m``, ``250ms``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
DURATION_MAX_LENGTH = 32
MAX_DURATION = "168h"
MAX_DURATION_SECONDS = 168 * 3600.0
"""No duration in the spec may exceed a week: larger ones overflow date arithmetic and wedge a rollout."""
_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError naming the text when it is not a duration."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(int(n) * _SECONDS[unit] for n, unit in _PART.findall(text))


def _check(text: str) -> str:
    if parse_duration(text) > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than the maximum {MAX_DURATION} (7 days)")
    return text


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=DURATION_MAX_LENGTH), AfterValidator(_check)]

"""What a provider hands back, and the one error type it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ProviderError(Exception):
    """A measurement could not be taken (unreachable, timeout, bad query, several series...).

    Becomes an Error measurement; never a pass. The message must not contain secrets (no DSNs, no tokens).
    """


@dataclass(frozen=True)
class Reading:
    """A provider's answer. ``value is None`` means no data: judged Inconclusive, never Successful."""

    value: Any | None
    samples: int | None = None
    detail: str = ""
    explain: str | None = None
    """Why the value may not pass, in words (e.g. the blocks of a /trading/status answer); appended to the
    verdict message of a measurement that does not pass."""

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
    """A provider's answer. ``value is None`` means no data: judged Inconclusive, never Successful.

    ``warnings``: the source said its answer may be incomplete (Prometheus ``warnings``): Inconclusive, quoted."""

    value: Any | None
    samples: int | None = None
    detail: str = ""
    """Why there is no data (with ``value is None``)."""
    warnings: tuple[str, ...] = ()
    note: str = ""
    """Context the provider measured along with the value (the Postgres column ``detail``); quoted after the
    verdict message, never judged."""
    explain: str | None = None
    """Why the value may not pass, in words (e.g. the blocks of a /trading/status answer); appended to the
    verdict message of a measurement that does not pass."""

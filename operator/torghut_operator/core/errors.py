"""The operator's errors: temporary ones are retried on the next turn, permanent ones are reported in status."""

from __future__ import annotations


class OperatorError(Exception):
    """Base of the operator's own errors. Messages never contain secrets."""


class TemporaryError(OperatorError):
    """The world may fix itself (API server or database unreachable, object not there yet): retry later."""


class PermanentError(OperatorError):
    """Retrying will not help until someone changes something (forbidden, invalid request)."""

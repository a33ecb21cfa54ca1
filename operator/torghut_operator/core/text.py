"""Text for people and for the record, one home each: text cut to size, numbers and values as compact text."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

VALUE_LIMIT = 80
"""Values are shortened to about this many characters in messages."""
VALUE_TEXT_LIMIT = 256
"""A measured value is kept (status, ledger) as at most this many characters."""


def shorten(text: str, limit: int) -> str:
    """``text`` with runs of whitespace collapsed, cut to ``limit`` characters with an ellipsis (for a message)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def cut(text: str, limit: int) -> str:
    """``text`` as it is, cut to ``limit`` characters with an ellipsis (a value kept for the record)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_value(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value as compact text: ``0.12``, ``12`` (not ``12.0``), ``1e-07``, ``true``, ``"text"``, JSON for
    structures; shortened to about ``limit`` characters."""
    if value is None:
        return "null"
    return shorten(json.dumps(value, ensure_ascii=False) if isinstance(value, str) else _plain(value), limit)


def value_text(value: Any) -> str | None:
    """A measured value as text for status and the ledger: ``0.12``, ``12``, ``true``, strings as they are,
    JSON for structures; at most VALUE_TEXT_LIMIT characters."""
    return None if value is None else cut(_plain(value), VALUE_TEXT_LIMIT)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        return format_number(_decimal_float(value) if isinstance(value, Decimal) else value)
    if isinstance(value, str):
        return value
    return to_json(value)


def _decimal_float(value: Decimal) -> float:
    """A Decimal as a float; a signalling NaN (which float() refuses) as NaN."""
    return math.nan if value.is_snan() else float(value)


def format_number(number: float) -> str:
    """Up to 10 significant digits, no trailing ``.0``: 0.12, 12, 1234567.5, 1e-07, +Inf, NaN."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.10g}"


def to_json(value: Any) -> str:
    """Compact JSON; a Decimal as a number, anything else JSON lacks as its ``str``."""

    def default(item: Any) -> Any:
        if isinstance(item, Decimal):
            return _decimal_float(item)
        return str(item)

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=default, allow_nan=True)


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_KEY_PASSWORD = re.compile(
    r"(\b[a-z_]*(?:password|passwd|pwd|secret|token)\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE
)


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def hide_userinfo(text: str) -> str:
    """Every URL in ``text`` with its userinfo (``user:password@``, or a token before ``@``) written ``***@``: how a
    URL is shown in status, events, the evidence and logs. Only the request itself uses the URL as written."""
    return _USERINFO.sub("***@", text)


def redact_log(text: str) -> str:
    """A container log fit for status and events: URL passwords (``scheme://user:***@``) and ``password=...`` style
    values removed, control characters other than newlines and tabs dropped."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _KEY_PASSWORD.sub(r"\1***", text)
    return "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())


_ERROR_LINE = re.compile(r"error|fatal|exception|traceback|panic", re.IGNORECASE)


def telling_log_line(text: str) -> tuple[str, str] | None:
    """The line of a container log that says why it failed, and what it is: the last line that looks like an error
    (``"last error line"``), else the last line (``"last log line"``); None for an empty log. A container's stdout
    and stderr reach its log through two pipes, so a log's order across them is not guaranteed: an error printed to
    stderr last can sit above a line printed to stdout before it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    for line in reversed(lines):
        if _ERROR_LINE.search(line):
            return "last error line", line
    return "last log line", lines[-1]

"""A small, strict JSONPath subset: $, .name, ['name'], [index]. Enough for gates; nothing that evaluates."""

from __future__ import annotations

import re
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_SEGMENT = re.compile(
    rf"\.(?P<dot>{_NAME})"
    r"|\[\s*(?:'(?P<single>(?:[^'\\]|\\.)*)'|\"(?P<double>(?:[^\"\\]|\\.)*)\"|(?P<index>-?\d+))\s*\]"
)


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """The keys (str) and list indexes (int) of ``path``; ValueError naming the problem otherwise."""
    text = path.strip()
    if not text.startswith("$"):
        raise ValueError(f"JSONPath {path!r} must start with $")
    keys: list[str | int] = []
    position = 1
    while position < len(text):
        match = _SEGMENT.match(text, position)
        if match is None:
            raise ValueError(
                f"JSONPath {path!r}: unsupported syntax at {text[position:]!r} (supported: .name, ['name'], [index])"
            )
        if match.group("dot") is not None:
            keys.append(match.group("dot"))
        elif match.group("index") is not None:
            keys.append(int(match.group("index")))
        else:
            quoted = match.group("single") if match.group("single") is not None else match.group("double")
            keys.append(re.sub(r"\\(.)", r"\1", quoted))
        position = match.end()
    return tuple(keys)


_MISSING = object()


def select(document: Any, keys: tuple[str | int, ...]) -> Any:
    """The value at ``keys`` in ``document``, or None when the path matches nothing. Strict: a key selects
    only from an object, an index only from an array."""
    current = document
    for key in keys:
        if isinstance(key, str) and isinstance(current, dict):
            current = current.get(key, _MISSING)
        elif isinstance(key, int) and isinstance(current, list) and -len(current) <= key < len(current):
            current = current[key]
        else:
            return None
        if current is _MISSING:
            return None
    return current

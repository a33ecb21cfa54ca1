"""Prometheus gates: one PromQL instant query, its answer validated before anything is judged.

The answer must be a Prometheus API envelope with ``status: "success"`` and ``resultType`` ``vector`` or
``scalar``; a scalar, or an instant vector of exactly one series, is the value. Every sample value must be
Prometheus' text form of a float; it becomes a Python float (NaN is no data, ±Inf is judged an Error).

| answer | verdict |
|---|---|
| HTTP error status, unreachable, timeout, a body that isn't the API's JSON | Error |
| ``status`` other than ``success`` (even with HTTP 200) | Error naming ``errorType: error`` |
| ``resultType`` ``string``, ``matrix`` or unknown; several series; a malformed series or sample | Error |
| a sample value that isn't a float's text (``"abc"``, a JSON number, null) | Error |
| ``warnings`` present | Inconclusive, the warnings quoted (the answer may be partial) |
| empty vector, NaN | Inconclusive (no data) |

``infos`` (informational annotations, e.g. about metric naming) are ignored: they don't make an answer partial.

Why not prometheus-api-client's ``custom_query``: it returns ``data.result`` only, dropping ``status``,
``resultType`` and ``warnings``, which the verdict depends on; and its requests session only has per-socket
timeouts, so a server trickling its answer holds the worker past any deadline. The query API is one GET, done
here with the same deadline-bound httpx fetch as HTTP gates. The bearer token is only ever sent as a header,
never shown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from torghut_operator.adapters.http import FetchError, fetch, new_client
from torghut_operator.core.api.spec import Check
from torghut_operator.core.deadline import Deadline
from torghut_operator.core.reading import ProviderError, Reading
from torghut_operator.core.text import format_number, shorten

_MAX_LABEL_SETS = 3
_LABELS_LIMIT = 300
_WARNINGS_LIMIT = 300
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}


@dataclass(frozen=True)
class Sample:
    labels: str
    """``name{k="v",...}``; empty for a scalar."""
    value: float


@dataclass(frozen=True)
class QueryResult:
    result_type: str
    samples: tuple[Sample, ...]
    warnings: tuple[str, ...] = ()


def decode(status: int, body: bytes, target: str) -> QueryResult:
    """The validated answer of an instant query (pure). ProviderError names what is wrong with it."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if not 200 <= status < 300:
        detail = _error_text(document) if isinstance(document, dict) else shorten(body.decode("utf-8", "replace"), 200)
        raise ProviderError(f"prometheus {target} answered HTTP {status}: {detail}")
    if not isinstance(document, dict) or "status" not in document:
        raise ProviderError(f"{target} did not answer like a Prometheus query API")
    if document["status"] != "success":
        raise ProviderError(
            f"prometheus {target} answered status {_quoted(document['status'])}: {_error_text(document)}"
        )
    warnings = document.get("warnings")
    if warnings is not None and not isinstance(warnings, list):
        raise ProviderError(f"prometheus {target} answered malformed warnings: {shorten(repr(warnings), 100)}")
    data = document.get("data")
    if not isinstance(data, dict):
        raise ProviderError(f"prometheus {target} answered without data")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        samples: tuple[Sample, ...] = (_sample(result, ""),)
    elif result_type == "vector":
        if not isinstance(result, list):
            raise ProviderError(f"prometheus {target} answered a malformed vector: {shorten(repr(result), 200)}")
        samples = tuple(_series(item) for item in result)
    elif result_type == "matrix":
        raise ProviderError(
            "the query returned a range vector (resultType matrix); gates need an instant vector or a scalar"
        )
    elif result_type == "string":
        raise ProviderError("the query returned a string (resultType string); gates need an instant vector or a scalar")
    else:
        raise ProviderError(f"prometheus {target} answered unknown resultType {_quoted(result_type)}")
    return QueryResult(str(result_type), samples, tuple(str(w) for w in (warnings or [])))


def _series(item: Any) -> Sample:
    if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
        raise ProviderError(f"malformed series in the answer: {shorten(repr(item), 200)}")
    if "value" not in item:
        raise ProviderError("a series without a single value (a range vector?); gates need an instant vector")
    return _sample(item["value"], _labels(item["metric"]))


def _sample(pair: Any, labels: str) -> Sample:
    if (
        not isinstance(pair, list)
        or len(pair) != 2
        or isinstance(pair[0], bool)
        or not isinstance(pair[0], int | float)
    ):
        raise ProviderError(f"malformed sample {shorten(repr(pair), 100)} in the answer")
    raw = pair[1]
    # Prometheus sends every sample value as a string; anything else is not a Prometheus answer.
    if not isinstance(raw, str):
        raise ProviderError(f"sample value {shorten(json.dumps(raw), 60)} is not a string-encoded float")
    if raw in _SPECIAL:
        return Sample(labels, _SPECIAL[raw])
    if not _FLOAT.fullmatch(raw):
        raise ProviderError(f"sample value {_quoted(raw)} is not a number")
    return Sample(labels, float(raw))


class PrometheusGateway:
    """Instant queries against one Prometheus-compatible API (Prometheus, Mimir, Thanos query frontend).

    ``url``: base URL such as ``http://prometheus.monitoring:9090``. ``timeout``: the longest any request may
    take (each is also bounded by its measurement's deadline, and the time left is sent as the query's
    server-side ``timeout``). No retries here: the verify interval is the retry. Creating the gateway opens no
    connection. Thread-safe."""

    def __init__(self, url: str, *, bearer_token: str | None, timeout: float) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("the Prometheus URL must be an http:// or https:// URL")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url.strip().rstrip("/")
        self.target = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        """The URL without credentials, safe to show."""
        self.timeout = timeout
        self._secrets = tuple(s for s in (bearer_token, parts.password) if s)
        self._client = new_client({"Authorization": f"Bearer {bearer_token}"} if bearer_token else None)

    def __repr__(self) -> str:
        return f"PrometheusGateway({self.target})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusGateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, check: Check, deadline: Deadline) -> Reading:
        """Evaluate ``check.prometheus.query`` (and its ``samplesQuery``) now."""
        if check.prometheus is None:
            raise ProviderError(f"check {check.name} has no prometheus query")
        result = self.query(check.prometheus.query, deadline)
        value, detail = _single(result)
        warnings = result.warnings
        samples = None
        if check.prometheus.samples_query is not None:
            counted = self.query(check.prometheus.samples_query, deadline)
            warnings += counted.warnings
            samples = _count(_single(counted)[0])
        return Reading(value, samples=samples, detail=detail, warnings=_shown_warnings(warnings))

    def instant(self, query: str, deadline: Deadline | None = None) -> tuple[float | None, str]:
        """The single value of an instant query and a short detail; None when there is no data."""
        return _single(self.query(query, deadline or Deadline.after(self.timeout)))

    def series(self, query: str, *, limit: int, deadline: Deadline | None = None) -> list[tuple[str, str]]:
        """Up to ``limit`` series of an instant query as (label set, value) texts, largest value first, e.g.
        ``[('torghut_trading_no_signal_reason_total{reason="market_closed"}', "12")]``; a scalar is one
        entry with an empty label set. For explaining a verdict, never for judging."""
        try:
            result = self.query(query, deadline or Deadline.after(self.timeout))
        except ProviderError as error:
            if "range vector" in str(error) or "resultType string" in str(error):
                raise ProviderError("explain query must return an instant vector or a scalar") from None
            raise
        ordered = sorted(result.samples, key=lambda s: -math.inf if math.isnan(s.value) else s.value, reverse=True)
        return [(s.labels, format_number(s.value)) for s in ordered[: max(0, limit)]]

    def query(self, query: str, deadline: Deadline) -> QueryResult:
        """One instant query, its answer validated (see the module docstring)."""
        budget = deadline.timeout(self.timeout)
        try:
            answer = fetch(
                self._client,
                f"{self.url}/api/v1/query",
                deadline,
                params={"query": query, "timeout": f"{budget:.3f}"},  # float seconds, which the API accepts
                cap=self.timeout,
                shown=f"prometheus {self.target}",
            )
        except FetchError as error:
            if error.kind == "connect":
                raise ProviderError(self._scrub(f"cannot reach prometheus {self.target}: {error.cause}")) from None
            if error.kind == "timeout":
                raise ProviderError(f"prometheus {self.target} gave no answer within {budget:g}s") from None
            raise ProviderError(self._scrub(str(error))) from None
        return decode(answer.status, answer.body, self.target)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _single(result: QueryResult) -> tuple[float | None, str]:
    if result.result_type == "scalar":
        return _value(result.samples[0].value, "scalar")
    if not result.samples:
        return None, "empty vector: no series matched"
    if len(result.samples) > 1:
        shown = ", ".join(s.labels for s in result.samples[:_MAX_LABEL_SETS])
        more = f", and {len(result.samples) - _MAX_LABEL_SETS} more" if len(result.samples) > _MAX_LABEL_SETS else ""
        raise ProviderError(
            shorten(f"the query returned {len(result.samples)} series, expected one: {shown}{more}", _LABELS_LIMIT)
            + "; aggregate it (e.g. sum(...))"
        )
    return _value(result.samples[0].value, result.samples[0].labels)


def _value(number: float, where: str) -> tuple[float | None, str]:
    if math.isnan(number):
        return None, f"NaN ({where})"
    return number, where


def _count(value: float | None) -> int | None:
    if value is None:
        return None
    if math.isinf(value):
        raise ProviderError(f"samplesQuery must return a finite number, got {format_number(value)}")
    if value < 0:
        raise ProviderError(f"samplesQuery returned a negative count {value:g}")
    return math.floor(value)  # increase() extrapolates; round down, never up


def _shown_warnings(warnings: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(shorten(w, _WARNINGS_LIMIT) for w in dict.fromkeys(warnings))


def _labels(metric: dict[str, Any]) -> str:
    name = metric.get("__name__", "")
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(metric.items()) if key != "__name__")
    return f"{name}{{{pairs}}}"


def _error_text(document: dict[str, Any]) -> str:
    return shorten(f"{document.get('errorType', 'error')}: {document.get('error', '')}", 200)


def _quoted(value: Any) -> str:
    return shorten(json.dumps(value, ensure_ascii=False, default=str), 60)

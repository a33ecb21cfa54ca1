"""Prometheus gates: one PromQL instant query through prometheus-api-client.

A scalar, or an instant vector of exactly one series, is the value. An empty vector or NaN is no data
(Inconclusive, never a pass); several series, a range vector, an HTTP error, bad PromQL, an unreachable server
or a timeout raise ProviderError. The bearer token is only ever sent as a header, never shown.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from torghut_operator.api.spec import Check
from torghut_operator.gates.judge import format_number
from torghut_operator.gates.reading import ProviderError, Reading

_STATUS = re.compile(r"HTTP Status Code (\d+) \((b'.*'|b\".*\")\)", re.DOTALL)
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")
_MAX_LABEL_SETS = 3
_LABELS_LIMIT = 300


class PrometheusGateway:
    """Instant queries against one Prometheus-compatible API (Prometheus, Mimir, Thanos query frontend).

    ``url``: base URL such as ``http://prometheus.monitoring:9090``. ``timeout``: seconds for each HTTP
    request, also sent as the query's server-side ``timeout``. No retries here: the verify interval is the
    retry. Creating the gateway opens no connection. Thread-safe."""

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
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        self._client = PrometheusConnect(
            url=self.url,
            headers=headers,
            retry=Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
            timeout=timeout,  # type: ignore[arg-type]  # requests takes float seconds
        )

    def __repr__(self) -> str:
        return f"PrometheusGateway({self.target})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusGateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, check: Check) -> Reading:
        """Evaluate ``check.prometheus.query`` (and its ``samplesQuery``) now."""
        if check.prometheus is None:
            raise ProviderError(f"check {check.name} has no prometheus query")
        value, detail = self.instant(check.prometheus.query)
        samples = None
        if check.prometheus.samples_query is not None:
            samples = self._samples(check.prometheus.samples_query)
        return Reading(value, samples=samples, detail=detail)

    def instant(self, query: str) -> tuple[float | str | None, str]:
        """The single value of an instant query and a short detail; None when there is no data."""
        data = self._query(query)
        if (
            isinstance(data, list)
            and len(data) == 2
            and isinstance(data[0], int | float)
            and not isinstance(data[1], dict)
        ):
            return _sample(data[1], "scalar")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ProviderError(f"unexpected answer from {self.target}: {_short(repr(data), 200)}")
        if any("values" in series for series in data):
            raise ProviderError("the query returned a range vector; gates need an instant vector or a scalar")
        if not data:
            return None, "empty vector: no series matched"
        if len(data) > 1:
            shown = ", ".join(_labels(series.get("metric", {})) for series in data[:_MAX_LABEL_SETS])
            more = f", and {len(data) - _MAX_LABEL_SETS} more" if len(data) > _MAX_LABEL_SETS else ""
            raise ProviderError(
                _short(f"the query returned {len(data)} series, expected one: {shown}{more}", _LABELS_LIMIT)
                + "; aggregate it (e.g. sum(...))"
            )
        series = data[0]
        try:
            raw = series["value"][1]
        except (KeyError, IndexError, TypeError):
            raise ProviderError(f"unexpected series from {self.target}: {_short(repr(series), 200)}") from None
        return _sample(raw, _labels(series.get("metric", {})))

    def series(self, query: str, *, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` series of an instant query as (label set, value) texts, largest value first, e.g.
        ``[('torghut_trading_no_signal_reason_total{reason="market_closed"}', "12")]``; a scalar is one
        entry with an empty label set. For explaining a verdict, never for judging."""
        data = self._query(query)
        if isinstance(data, list) and len(data) == 2 and isinstance(data[0], int | float):
            return [("", _text(data[1]))]
        if not isinstance(data, list) or not all(isinstance(item, dict) and "value" in item for item in data):
            raise ProviderError("explain query must return an instant vector or a scalar")
        entries = [(_labels(item.get("metric", {})), item["value"][1]) for item in data]
        entries.sort(key=lambda entry: _sort_key(entry[1]), reverse=True)
        return [(labels, _text(value)) for labels, value in entries[: max(0, limit)]]

    def _samples(self, query: str) -> int | None:
        value, _ = self.instant(query)
        if value is None:
            return None
        if isinstance(value, str) or math.isinf(value):
            raise ProviderError(f"samplesQuery must return a finite number, got {_short(str(value), 60)}")
        if value < 0:
            raise ProviderError(f"samplesQuery returned a negative count {value:g}")
        return math.floor(value)  # increase() extrapolates; round down, never up

    def _query(self, query: str) -> Any:
        try:
            return self._client.custom_query(query, params={"timeout": f"{self.timeout:g}s"})
        except PrometheusApiClientException as error:
            raise ProviderError(self._scrub(f"prometheus {self.target} {_api_error(str(error))}")) from None
        except requests.Timeout:
            raise ProviderError(f"prometheus {self.target} gave no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as error:
            raise ProviderError(self._scrub(f"cannot reach prometheus {self.target}: {_cause(error)}")) from None
        except requests.RequestException as error:
            raise ProviderError(self._scrub(f"prometheus {self.target}: {type(error).__name__}")) from None
        except (ValueError, KeyError, TypeError):  # 200 without a Prometheus API body
            raise ProviderError(f"{self.target} did not answer like a Prometheus query API") from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _sample(raw: Any, where: str) -> tuple[float | str | None, str]:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return str(raw), where  # a PromQL string result
    if math.isnan(number):
        return None, f"NaN ({where})"
    return number, where


def _text(raw: Any) -> str:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return _short(str(raw), 60)
    return format_number(number)


def _sort_key(raw: Any) -> float:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(number) else number


def _labels(metric: dict[str, Any]) -> str:
    name = metric.get("__name__", "")
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(metric.items()) if key != "__name__")
    return f"{name}{{{pairs}}}"


def _api_error(message: str) -> str:
    """'HTTP Status Code 400 (b'{"status":"error","error":"parse error..."}')' -> 'HTTP 400: parse error...'"""
    match = _STATUS.search(message)
    if not match:
        return _short(message, 200)
    status, body = match.group(1), match.group(2)
    try:
        text = ast.literal_eval(body).decode("utf-8", "replace")
    except (ValueError, SyntaxError, UnicodeDecodeError):
        text = body
    try:
        document = json.loads(text)
        text = f"{document.get('errorType', 'error')}: {document.get('error', '')}"
    except (ValueError, AttributeError):
        pass
    return f"answered HTTP {status}: {_short(text, 200)}"


def _cause(error: Exception) -> str:
    """The root cause of a requests connection error ('[Errno 111] Connection refused'), not its URL dump."""
    found = _ERRNO.search(str(error))
    if found:
        return found.group(0).strip()
    return type(error).__name__


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""HTTP gates: a GET, its status, and a value from the body.

* The status must be one of the check's ``expectedStatus`` (default ``[200]``). Any other status is an answer,
  not an outage: ``read`` raises ``UnexpectedStatus``, a ProviderError subclass that ``take_measurement``
  judges **Failed** (not Error). Code that only knows ProviderError still fails closed (Error).
* With ``jsonPath`` the body must be JSON and the path selects the value; a path that matches nothing, or a
  JSON null, is no data. Without it the body is the value: parsed JSON when it is JSON, else the text. An
  empty body is no data.
* Errors (unreachable, timeout, a body over 4 MiB, a body that isn't JSON when a path is given) raise
  ProviderError. The timeout bounds the whole request, body included.

JSONPath is a small, strict subset: ``$``, ``.name``, ``['name']`` / ``["name"]`` and ``[index]`` (negative
counts from the end), e.g. ``$.autonomy.signals_total``, ``$.items[0]['execution_actual_adapter']``.
No wildcards, filters or recursive descent: a gate reads one value.

A whole-body read of Torghut's ``/trading/status`` carries an explanation (``gates.trading_status``): the message
of a measurement that does not pass names the block (trading disabled, kill switch on, loop not running,
last_error, zero signals).
"""

from __future__ import annotations

import json
import re
import time

import httpx

from torghut_operator.api.spec import Check
from torghut_operator.gates import trading_status
from torghut_operator.gates.jsonpath import parse_json_path, select
from torghut_operator.gates.reading import ProviderError, Reading

MAX_BODY_BYTES = 4 * 1024 * 1024


class UnexpectedStatus(ProviderError):
    """The server answered with a status the check does not expect: a Failed measurement."""

    def __init__(self, status: int, expected: list[int], url: str) -> None:
        super().__init__(f"HTTP {status}, expected {' or '.join(str(code) for code in expected)}")
        self.status = status
        self.expected = expected
        self.url = url


class HttpGateway:
    """GETs with a total ``timeout`` in seconds. Creating the gateway opens no connection. Thread-safe."""

    def __init__(self, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, headers={"Accept": "application/json"})

    def __repr__(self) -> str:
        return f"HttpGateway(timeout={self.timeout:g})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpGateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, check: Check) -> Reading:
        """GET ``check.http.url``; see the module docstring for what becomes the value."""
        if check.http is None:
            raise ProviderError(f"check {check.name} has no http url")
        spec = check.http
        try:
            keys = parse_json_path(spec.json_path) if spec.json_path is not None else None
        except ValueError as error:
            raise ProviderError(str(error)) from None
        status, content_type, body = self._get(spec.url)
        if status not in spec.expected_status:
            raise UnexpectedStatus(status, list(spec.expected_status), spec.url)
        text = body.decode("utf-8", "replace")
        if keys is not None:
            try:
                document = json.loads(text)
            except ValueError:
                raise ProviderError(
                    f"HTTP {status} body is not JSON ({content_type or 'no content type'}), "
                    f"so jsonPath {spec.json_path} can't apply"
                ) from None
            value = select(document, keys)
            if value is None:
                return Reading(None, detail=f"jsonPath {spec.json_path} matched nothing")
            return Reading(value, detail=f"HTTP {status}")
        if not text.strip():
            return Reading(None, detail=f"HTTP {status} with an empty body")
        try:
            document = json.loads(text)
        except ValueError:
            return Reading(text.strip(), detail=f"HTTP {status}")
        # Torghut's /trading/status: the message of a measurement that does not pass names what blocks the loop
        explain = trading_status.explain(document) if trading_status.is_trading_status_url(spec.url) else None
        return Reading(document, detail=f"HTTP {status}", explain=explain)

    def _get(self, url: str) -> tuple[int, str, bytes]:
        """Status, content type and body; the timeout covers connecting, headers and the whole body."""
        deadline = time.monotonic() + self.timeout
        shown = _safe_url(url)
        try:
            with self._client.stream("GET", url) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ProviderError(f"GET {shown}: body larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("body not complete in time")
                    chunks.append(chunk)
                return response.status_code, response.headers.get("content-type", ""), b"".join(chunks)
        except httpx.TimeoutException:
            raise ProviderError(f"GET {shown}: no complete answer within {self.timeout:g}s") from None
        except httpx.InvalidURL:
            raise ProviderError(f"GET {shown}: invalid URL") from None
        except httpx.HTTPError as error:
            raise ProviderError(f"GET {shown}: {type(error).__name__}: {_short(str(error), 200)}") from None


def _safe_url(url: str) -> str:
    """The URL without user:password@ (should a user put credentials in it)."""
    return re.sub(r"(?<=://)[^/@\s]*@", "", url)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""HTTP gates: a GET, its status, and a value from the body.

* The status must be one of the check's ``expectedStatus`` (default ``[200]``). Any other status is an answer,
  not an outage: ``read`` raises ``UnexpectedStatus``, a ProviderError subclass that ``take_measurement``
  judges **Failed** (not Error). Code that only knows ProviderError still fails closed (Error).
* With ``jsonPath`` the body must be strict JSON (``NaN``/``Infinity`` are not JSON) and the path selects the
  value; a path that matches nothing, or a JSON null, is no data. Without it the body is the value: parsed JSON
  when it is JSON, else the text. An empty body is no data. What the value may be is the judge's business: a
  JSON string ``"0.5"`` is a string, never a number for ``min``/``max``.
* Errors (unreachable, timeout, a body over 4 MiB, a body that isn't JSON when a path is given) raise
  ProviderError.

Every GET is bounded by the measurement's deadline as a whole (connect, headers and body): the timeouts come
from the time left, and the socket is shut down when the deadline passes, so a server that trickles its answer
a byte at a time can't hold the worker. Connections are not kept alive (a reused connection would escape that
cut; gates run seconds apart, so nothing is lost).

JSONPath is a small, strict subset: ``$``, ``.name``, ``['name']`` / ``["name"]`` and ``[index]`` (negative
counts from the end), e.g. ``$.autonomy.signals_total``, ``$.items[0]['execution_actual_adapter']``.
No wildcards, filters or recursive descent: a gate reads one value.

A whole-body read of Torghut's ``/trading/status`` carries an explanation (``gates.trading_status``): the message
of a measurement that does not pass names the block (trading disabled, kill switch on, loop not running,
last_error, zero signals).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from torghut_operator.adapters.torghut import trading_status
from torghut_operator.core.api.spec import Check
from torghut_operator.core.deadline import Deadline, DeadlineExceeded
from torghut_operator.core.jsonpath import parse_json_path, select
from torghut_operator.core.reading import ProviderError, Reading
from torghut_operator.core.text import hide_userinfo, shorten

MAX_BODY_BYTES = 4 * 1024 * 1024


class UnexpectedStatus(ProviderError):
    """The server answered with a status the check does not expect: a Failed measurement."""

    def __init__(self, status: int, expected: list[int], url: str) -> None:
        super().__init__(f"HTTP {status}, expected {' or '.join(str(code) for code in expected)}")
        self.status = status
        self.expected = expected
        self.url = url


class FetchError(ProviderError):
    """A GET that got no answer: ``kind`` is ``connect``, ``timeout`` or ``other``; ``cause`` is short and
    secret-free (``[Errno 111] Connection refused``)."""

    def __init__(self, message: str, *, kind: str, cause: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.cause = cause


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def new_client(headers: Mapping[str, str] | None = None) -> httpx.Client:
    """An httpx client for deadline-bound GETs: no keep-alive, no redirects."""
    return httpx.Client(
        follow_redirects=False,
        headers={"Accept": "application/json", **(headers or {})},
        limits=httpx.Limits(max_keepalive_connections=0),
    )


class _SocketCutter:
    """Shuts the request's socket down when the deadline passes, waking a thread blocked reading it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._cut = False

    def trace(self, name: str, info: dict[str, Any]) -> None:
        # httpcore's documented "trace" request extension: the network stream once TCP is connected.
        if name != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socket = sock
                if self._cut:
                    _shutdown(sock)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            if self._socket is not None:
                _shutdown(self._socket)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def fetch(
    client: httpx.Client,
    url: str,
    deadline: Deadline,
    *,
    params: Mapping[str, str] | None = None,
    cap: float | None = None,
    shown: str | None = None,
) -> Answer:
    """GET ``url`` within ``deadline`` (and at most ``cap`` seconds); the body is read whole, up to
    MAX_BODY_BYTES. Raises DeadlineExceeded when the deadline passes, ProviderError for anything else."""
    shown = shown or _safe_url(url)
    cutter = _SocketCutter()
    budget = deadline.timeout(cap)
    try:
        with deadline.on_expiry(cutter.cut):
            request = client.build_request(
                "GET", url, params=params, timeout=httpx.Timeout(budget), extensions={"trace": cutter.trace}
            )
            response = client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ProviderError(f"GET {shown}: body larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
                    deadline.check("reading the body")
                    chunks.append(chunk)
                return Answer(response.status_code, response.headers.get("content-type", ""), b"".join(chunks))
            finally:
                response.close()
    except (ProviderError, DeadlineExceeded):
        raise
    except httpx.HTTPError as error:
        if deadline.expired():
            raise DeadlineExceeded(f"no answer within the check's timeout of {deadline.label}") from None
        if isinstance(error, httpx.TimeoutException):
            raise FetchError(
                f"GET {shown}: no complete answer within {budget:g}s", kind="timeout", cause=f"{budget:g}s"
            ) from None
        cause = f"{type(error).__name__}: {shorten(str(error), 200)}"
        kind = "connect" if isinstance(error, httpx.ConnectError) else "other"
        raise FetchError(
            f"GET {shown}: {cause}", kind=kind, cause=shorten(str(error), 200) or type(error).__name__
        ) from None
    except httpx.InvalidURL:
        raise FetchError(f"GET {shown}: invalid URL", kind="other", cause="invalid URL") from None


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 defines it: ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json accepts) are
    refused. ValueError otherwise."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


class HttpGateway:
    """GETs with a total ``timeout`` in seconds (also bounded by each measurement's deadline). Creating the
    gateway opens no connection. Thread-safe."""

    def __init__(self, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._client = new_client()

    def __repr__(self) -> str:
        return f"HttpGateway(timeout={self.timeout:g})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpGateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, check: Check, deadline: Deadline) -> Reading:
        """GET ``check.http.url``; see the module docstring for what becomes the value."""
        if check.http is None:
            raise ProviderError(f"check {check.name} has no http url")
        spec = check.http
        try:
            keys = parse_json_path(spec.json_path) if spec.json_path is not None else None
        except ValueError as error:
            raise ProviderError(str(error)) from None
        answer = fetch(self._client, spec.url, deadline, cap=self.timeout)
        if answer.status not in spec.expected_status:
            raise UnexpectedStatus(answer.status, list(spec.expected_status), spec.url)
        status = answer.status
        try:
            text = answer.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError(f"HTTP {status} body is not UTF-8 text") from None
        if keys is not None:
            try:
                document = strict_json(text)
            except ValueError as error:
                raise ProviderError(
                    f"HTTP {status} body is not JSON ({answer.content_type or 'no content type'}): "
                    f"{shorten(str(error), 80)}; jsonPath {spec.json_path} can't apply"
                ) from None
            value = select(document, keys)
            if value is None:
                return Reading(None, detail=f"jsonPath {spec.json_path} matched nothing")
            return Reading(value, detail=f"HTTP {status}")
        if not text.strip():
            return Reading(None, detail=f"HTTP {status} with an empty body")
        try:
            document = strict_json(text)
        except ValueError:
            return Reading(text.strip(), detail=f"HTTP {status}")
        # Torghut's /trading/status: the message of a measurement that does not pass names what blocks the loop
        explain = trading_status.explain(document) if trading_status.is_trading_status_url(spec.url) else None
        return Reading(document, detail=f"HTTP {status}", explain=explain)


def _safe_url(url: str) -> str:
    """The URL as shown: its userinfo (should a user put credentials in it) written ``***@``."""
    return hide_userinfo(url)

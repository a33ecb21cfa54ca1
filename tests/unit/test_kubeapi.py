"""The operator's API session against a crafted API server (aiohttp on loopback): what each answer becomes."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from torghut_operator.adapters.kube import KubeGateway
from torghut_operator.adapters.kubeapi import KubeApi, decode
from torghut_operator.core.api.spec import Target
from torghut_operator.core.errors import PermanentError, TemporaryError

pytestmark = pytest.mark.unit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TARGET = Target.model_validate({"kind": "Deployment", "name": "torghut", "container": "torghut", "image": "x@sha256:1"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(handler: Handler, call: Callable[[KubeGateway], Awaitable[Any]], logins: list[str]) -> Any:
    """Start an API server answering with ``handler``, make ``call`` through the gateway, stop it."""

    async def scenario() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()

        def login() -> kopf.ConnectionInfo:
            token = f"token-{len(logins) + 1}"
            logins.append(token)
            return kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token=token)

        api = KubeApi(login=login)
        try:
            return await call(KubeGateway(api))
        finally:
            await api.close()
            await runner.cleanup()

    return asyncio.run(scenario())


def _answer(status: int, body: str = "{}") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, content_type="application/json")

    return handler


def test_a_missing_object_is_none_and_a_forbidden_one_an_error_that_does_not_fix_itself() -> None:
    assert _serve(_answer(404), lambda k: k.get_rollout("ns", "r"), []) is None
    with pytest.raises(PermanentError, match="get TorghutRollout ns/r: 403"):
        _serve(_answer(403), lambda k: k.get_rollout("ns", "r"), [])
    with pytest.raises(TemporaryError, match="get Deployment ns/torghut: 503"):
        _serve(_answer(503), lambda k: k.get_target("ns", TARGET), [])


def test_a_refusal_carries_the_api_servers_reason_on_one_line_and_bounded() -> None:
    quota = '{"kind":"Status","message":"jobs.batch \\"m\\" is forbidden:\\n exceeded quota: no-jobs"}'
    with pytest.raises(PermanentError, match=r'403 Forbidden: jobs\.batch "m" is forbidden: exceeded quota: no-jobs$'):
        _serve(_answer(403, quota), lambda k: k.get_rollout("ns", "r"), [])
    with pytest.raises(PermanentError) as long:
        _serve(_answer(422, '{"message": "%s"}' % ("x" * 1000)), lambda k: k.get_rollout("ns", "r"), [])
    assert len(str(long.value)) < 400
    with pytest.raises(TemporaryError, match=r"503 Service Unavailable$"):  # no Status: just the status line
        _serve(_answer(503, "<html>down</html>"), lambda k: k.get_target("ns", TARGET), [])


def test_an_answer_that_is_not_json_or_not_an_object_never_passes_as_one() -> None:
    with pytest.raises(TemporaryError, match="not JSON"):
        _serve(_answer(200, "<html>proxy error</html>"), lambda k: k.get_rollout("ns", "r"), [])
    with pytest.raises(TemporaryError, match="unexpected answer"):
        _serve(_answer(200, "[1, 2]"), lambda k: k.get_rollout("ns", "r"), [])


def test_a_status_write_that_lost_the_race_is_a_conflict_not_an_error() -> None:
    assert _serve(_answer(409), lambda k: k.patch_rollout_status("ns", "r", {}, "7"), []) is None


def test_a_rejected_token_logs_in_again_once_and_the_call_goes_through() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") == "Bearer token-1":
            return web.Response(status=401)
        return web.json_response({"metadata": {"name": "r"}})

    logins: list[str] = []
    body = _serve(handler, lambda k: k.get_rollout("ns", "r"), logins)
    assert body == {"metadata": {"name": "r"}}
    assert logins == ["token-1", "token-2"]
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_a_connection_dropped_mid_read_is_retried_once_but_a_dropped_write_is_not() -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        if len(calls) == 1:
            assert request.transport is not None
            request.transport.close()  # as a server closing a kept-alive connection
            return web.Response()
        return web.json_response({"metadata": {"name": "r"}})

    assert _serve(handler, lambda k: k.get_rollout("ns", "r"), []) == {"metadata": {"name": "r"}}
    assert calls == ["GET", "GET"]

    calls.clear()
    with pytest.raises(TemporaryError, match="patch status of TorghutRollout ns/r"):
        _serve(handler, lambda k: k.patch_rollout_status("ns", "r", {}, "7"), [])
    assert calls == ["PATCH"], "a write is never sent twice by the session"


INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
"""The API server holds numbers as int64 or float64 (apimachinery's JSON); orjson reads a wider integer as a float."""
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(JSON)
def test_every_json_answer_reads_as_pythons_json_reads_it(value: Any) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    assert decode(raw, "get") == json.loads(raw)
    assert decode(json.dumps(value).encode(), "get") == json.loads(raw)  # with \u escapes too


def test_nan_reads_as_before_an_empty_answer_is_none_and_a_broken_one_never_passes() -> None:
    assert math.isnan(decode(b'{"replicas": NaN}', "get")["replicas"])  # json's reading, as before
    assert decode(b"", "get") is None
    for broken in (b'{"a": ', b"  ", b"\xff"):
        with pytest.raises(TemporaryError, match="get: the API server's answer is not JSON"):
            decode(broken, "get")


def test_a_status_write_sends_the_patch_as_the_json_the_api_server_reads() -> None:
    received: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        received.append((request.content_type, json.loads(await request.read())))
        return web.Response(text='{"metadata": {"resourceVersion": "8"}}', content_type="application/json")

    patch = {"phase": "Verifying", "message": "waiting for 1/2 replicas — «é»", "checks": [{"n": 1.5}], "gone": None}
    assert _serve(handler, lambda k: k.patch_rollout_status("ns", "r", patch, "7"), []) == "8"
    content_type, sent = received[0]
    assert content_type == "application/merge-patch+json"
    assert sent["status"] == patch
    assert sent["metadata"]["resourceVersion"] == "7"

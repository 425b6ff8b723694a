"""Access log: request ids, one structured line per request, never the key (units, then the server)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from gptoss.observability.access_log import (
    AccessLogMiddleware,
    AccessRecord,
    access_record,
    format_line,
    note,
    note_prompt,
    request_id_from,
)
from gptoss.settings import Settings
from tests.conftest import ADMIN_KEY, RemoteServer

MODEL = "gpt-oss-20b"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


# --- request ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["abc", "my-req.1_2", "A" * 128, "0"])
def test_valid_request_id_is_kept(rid: str):
    assert request_id_from([(b"X-Request-ID", rid.encode())]) == rid


@pytest.mark.parametrize(
    "raw",
    [b"", b"A" * 129, b"has space", b"semi;colon", b"new\nline", b"quote\"", "caf\u00e9".encode(), b"\xff\xfe"],
)
def test_invalid_request_id_is_replaced(raw: bytes):
    rid = request_id_from([(b"x-request-id", raw)])
    assert GENERATED_ID.fullmatch(rid)


def test_missing_or_repeated_request_id_is_generated():
    assert GENERATED_ID.fullmatch(request_id_from([]))
    assert GENERATED_ID.fullmatch(request_id_from(None))
    assert GENERATED_ID.fullmatch(request_id_from([(b"x-request-id", b"a"), (b"x-request-id", b"b")]))
    assert request_id_from([]) != request_id_from([])


# --- line format ---------------------------------------------------------------------------------------


def test_logfmt_quotes_only_when_needed():
    line = format_line({"a": "plain-value", "b": 'two words "q"', "c": 3, "d": True, "e": ""})
    assert line == 'a=plain-value b="two words \\"q\\"" c=3 d=true e=""'


def test_json_format():
    assert json.loads(format_line({"a": 1, "b": "x y"}, "json")) == {"a": 1, "b": "x y"}


# --- middleware ----------------------------------------------------------------------------------------


def _scope(path: str = "/v1/chat/completions", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers or [(b"authorization", b"Bearer " + ADMIN_KEY.encode())],
        "state": {},
    }


async def _run(mw: AccessLogMiddleware, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    return sent


def _app(status: int = 200, *, key: str | None = "alice", usage: tuple[int, int] | None = (10, 4), prompt: str = ""):
    """A stand-in for auth + route: sets the key name like AuthMiddleware and notes usage like the routes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if key is not None:
            scope["state"]["key_name"] = key
        note(scope, model=MODEL, stream=False)
        note_prompt(scope, Settings(log_prompts=True), lambda: prompt)
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-request-id", b"spoofed")]})
        if usage is not None:
            note(scope, prompt_tokens=usage[0], completion_tokens=usage[1])
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    return app


def _middleware(app: Any, **settings: Any) -> tuple[AccessLogMiddleware, list[AccessRecord]]:
    finished: list[AccessRecord] = []
    mw = AccessLogMiddleware(app, settings=Settings(**settings), on_finish=lambda rec, _s: finished.append(rec))
    return mw, finished


async def test_middleware_logs_one_line_and_sets_the_header(caplog: pytest.LogCaptureFixture):
    mw, finished = _middleware(_app(prompt="secret prompt text"))
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        auth = (b"authorization", b"Bearer " + ADMIN_KEY.encode())
        sent = await _run(mw, _scope(headers=[(b"x-request-id", b"req-42"), auth]))
    headers = sent[0]["headers"]
    assert [v for k, v in headers if k == b"x-request-id"] == [b"req-42"]  # ours, once; the app's replaced
    lines = [r.getMessage() for r in caplog.records if r.name == "gptoss.access"]
    assert len(lines) == 1
    line = lines[0]
    for part in ("request_id=req-42", "endpoint=/v1/chat/completions", "status=200", "key=alice",
                 f"model={MODEL}", "prompt_tokens=10", "completion_tokens=4", "latency_ms="):
        assert part in line, (part, line)
    assert ADMIN_KEY not in line and "secret prompt" not in line  # log_prompts is off
    assert finished[0].status == 200 and finished[0].key == "alice" and finished[0].completion_tokens == 4


async def test_prompt_is_logged_only_with_log_prompts(caplog: pytest.LogCaptureFixture):
    mw, _ = _middleware(_app(prompt="show me"), log_prompts=True)
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        await _run(mw, _scope())
    assert 'prompt="show me"' in caplog.records[-1].getMessage()


async def test_note_prompt_skips_work_when_off():
    scope = {"state": {"access": AccessRecord("id", "POST", "/x")}}

    def boom() -> str:
        raise AssertionError("the prompt must not even be built")

    note_prompt(scope, Settings(log_prompts=False), boom)
    assert access_record(scope).prompt is None


async def test_rejected_request_has_no_key_and_no_usage(caplog: pytest.LogCaptureFixture):
    mw, finished = _middleware(_app(401, key=None, usage=None))
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        sent = await _run(mw, _scope(headers=[(b"authorization", b"Bearer sk-wrong-key-material-0000")]))
    assert GENERATED_ID.fullmatch(dict(sent[0]["headers"])[b"x-request-id"].decode())
    line = caplog.records[-1].getMessage()
    assert "status=401" in line and "key=-" in line and "sk-wrong-key-material" not in line
    assert finished[0].status == 401


async def test_json_format_line(caplog: pytest.LogCaptureFixture):
    mw, _ = _middleware(_app(), access_log_format="json")
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        await _run(mw, _scope(headers=[(b"x-request-id", b"j-1")]))
    fields = json.loads(caplog.records[-1].getMessage())
    assert fields["request_id"] == "j-1" and fields["key"] == "alice" and fields["prompt_tokens"] == 10


async def test_probes_are_not_logged_but_get_an_id(caplog: pytest.LogCaptureFixture):
    mw, finished = _middleware(_app())
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        for path in ("/health", "/metrics", "/readyz"):
            sent = await _run(mw, _scope(path))
            assert b"x-request-id" in dict(sent[0]["headers"])
    assert not [r for r in caplog.records if r.name == "gptoss.access"]
    assert finished == []


async def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture):
    mw, finished = _middleware(_app(), access_log=False)
    with caplog.at_level(logging.INFO, logger="gptoss.access"):
        await _run(mw, _scope())
    assert not [r for r in caplog.records if r.name == "gptoss.access"]
    assert len(finished) == 1  # metrics are still recorded


async def test_crash_is_logged_as_500(caplog: pytest.LogCaptureFixture):
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    mw, finished = _middleware(app)
    with caplog.at_level(logging.INFO, logger="gptoss.access"), pytest.raises(RuntimeError):
        await _run(mw, _scope())
    assert finished[0].status == 500


async def test_client_gone_before_response_is_499():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    mw, finished = _middleware(app)
    await _run(mw, _scope())
    assert finished[0].status == 499


async def test_non_http_passes_through():
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw, finished = _middleware(app)
    await mw({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"] and finished == []


def test_note_without_middleware_is_a_no_op():
    note({"state": {}}, model="x")
    note(object(), model="x")
    assert access_record({"state": {}}) is None


# --- through the real server -------------------------------------------------------------------------


def _wait_for_line(server: RemoteServer, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in server.logs().splitlines():
            if needle in line and "endpoint=" in line:
                return line
        assert time.monotonic() < deadline, f"no access line with {needle!r} in the server log"
        time.sleep(0.1)


def test_access_line_has_request_id_key_and_usage_but_not_the_key(server: RemoteServer):
    rid = f"test-{uuid.uuid4().hex}"
    canary = f"zebra-canary-{uuid.uuid4().hex}"
    r = httpx.post(
        server.url("/v1/chat/completions"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "x-request-id": rid},
        json={"model": MODEL, "messages": [{"role": "user", "content": canary}], "max_tokens": 5},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    usage = r.json()["usage"]
    line = _wait_for_line(server, f"request_id={rid}")
    for part in ("method=POST", "endpoint=/v1/chat/completions", "status=200", "key=admin", f"model={MODEL}",
                 f"prompt_tokens={usage['prompt_tokens']}", f"completion_tokens={usage['completion_tokens']}",
                 "stream=false"):
        assert part in line, (part, line)
    assert float(re.search(r"latency_ms=([0-9.]+)", line).group(1)) > 0
    logs = server.logs()
    assert ADMIN_KEY not in logs
    assert canary not in logs  # GPTOSS_LOG_PROMPTS is off


def test_streaming_request_is_logged_after_it_ends(server: RemoteServer):
    rid = f"stream-{uuid.uuid4().hex}"
    with httpx.stream(
        "POST",
        server.url("/v1/completions"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "x-request-id": rid},
        json={"model": MODEL, "prompt": "hello", "max_tokens": 4, "stream": True},
        timeout=60,
    ) as r:
        assert r.headers["x-request-id"] == rid
        body = r.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    line = _wait_for_line(server, f"request_id={rid}")
    assert "stream=true" in line and "completion_tokens=4" in line and "key=admin" in line


def test_invalid_request_id_is_replaced_and_logged(server: RemoteServer):
    r = httpx.get(
        server.url("/v1/models"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "x-request-id": "x" * 129},
        timeout=30,
    )
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(rid)
    assert "key=admin" in _wait_for_line(server, f"request_id={rid}")


def test_rejected_key_is_logged_without_key_material(server: RemoteServer):
    bad = f"sk-wrong-{uuid.uuid4().hex}"
    rid = f"bad-{uuid.uuid4().hex}"
    r = httpx.get(server.url("/v1/models"), headers={"Authorization": f"Bearer {bad}", "x-request-id": rid}, timeout=30)
    assert r.status_code == 401
    assert r.headers["x-request-id"] == rid  # the access log wraps auth
    line = _wait_for_line(server, f"request_id={rid}")
    assert "status=401" in line and "key=-" in line
    assert bad not in server.logs()


def test_native_generate_api_is_logged(server: RemoteServer):
    rid = f"gen-{uuid.uuid4().hex}"
    r = httpx.post(
        server.url("/generate"),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "x-request-id": rid},
        json={"prompt": "hi", "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200
    line = _wait_for_line(server, f"request_id={rid}")
    assert "endpoint=/generate" in line and "key=admin" in line and "completion_tokens=" in line
    assert "completion_tokens=0" not in line

"""The request guard: unknown paths, body limits, and OpenAI-shaped errors from anything behind it."""

from __future__ import annotations

import json

import httpx
import pytest

from gptoss.api.guard import RequestGuardMiddleware
from gptoss.routes import ROUTES, find_route
from gptoss.settings import Settings


async def inner_app(scope, receive, send):
    """Echoes the body; ``/health`` answers like a framework would (text 503), ``/v1/models`` with a dict error."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/health":
        status, ctype, out = 503, b"text/plain", b"Service is not ready"
    elif path == "/v1/models":
        status, ctype, out = 400, b"application/json", b'[{"error": "bad input"}]'
    elif path == "/v1/completions":
        status, ctype = 429, b"application/json"
        out = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "x"}})
        out = out.encode()
    else:
        status, ctype, out = 200, b"application/octet-stream", body
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype), (b"retry-after", b"3")]})
    await send({"type": "http.response.body", "body": out})


def client(limit: int = 2048) -> httpx.AsyncClient:
    app = RequestGuardMiddleware(inner_app, settings=Settings(max_request_bytes=limit))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_route_table():
    assert find_route("/v1/chat/completions").permission == "chat"
    assert find_route("/v1/models/gpt-oss-20b").endpoint == "/v1/models/{model}"
    assert find_route("/v1/models/") is None  # a prefix route needs something after it
    assert find_route("/v1/responses").permission == "responses" and find_route("/v1/responses").streams
    assert find_route("/v1/responses/resp_1/input_items").endpoint == "/v1/responses/{id}"
    assert find_route("/v1/responses/resp_1").permission == "responses"
    for path in ("/v1/embeddings", "/v1/chat/completions/", "//v1/models", "/admin", "/v1"):
        assert find_route(path) is None, path
    assert len({r.path for r in ROUTES}) == len(ROUTES)


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_unknown_path_is_a_json_404(method):
    async with client() as http:
        r = await http.request(method, "/v1/embeddings", headers={"Authorization": "Bearer whatever"})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "not_found" and set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_body_over_the_limit_is_a_413_by_length_and_by_counting():
    async with client(limit=2048) as http:
        r = await http.post("/v1/chat/completions", content=b"x" * 2049)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def chunks(n: int):
            for _ in range(n):
                yield b"y" * 500

        r = await http.post("/v1/chat/completions", content=chunks(5))  # no Content-Length
        assert r.status_code == 413
        r = await http.post("/v1/chat/completions", content=chunks(4))  # 2000 bytes: handed on whole
        assert r.status_code == 200 and r.content == b"y" * 2000
        r = await http.post("/v1/chat/completions", content=b"z" * 2048)
        assert r.status_code == 200 and r.content == b"z" * 2048


async def test_errors_behind_it_leave_in_openai_shape():
    async with client() as http:
        r = await http.get("/health")
        assert r.status_code == 503 and r.json()["error"]["message"] == "Service is not ready"
        assert r.json()["error"]["type"] == "server_error" and r.headers["retry-after"] == "3"
        r = await http.get("/v1/models")
        assert r.status_code == 400 and r.json()["error"]["message"] == "bad input"
        r = await http.post("/v1/completions", content=b"{}")
        assert r.status_code == 429 and r.json()["error"] == {
            "message": "slow down", "type": "rate_limit_error", "param": None, "code": "x"
        }


async def test_a_chunked_body_is_counted_as_the_app_reads_it_not_read_ahead():
    """Nothing is read before the app (auth) decides; a framework's 500 for the error becomes the 413."""
    reads: list[int] = []

    async def refusing(scope, receive, send):  # like auth: answers without reading the body
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no key"})

    async def swallowing(scope, receive, send):  # like BentoML: any error while reading is its 500
        try:
            while (await receive()).get("more_body"):
                reads.append(1)
        except Exception:
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b'{"error": "unexpected"}'})

    async def chunks(n: int):
        for _ in range(n):
            yield b"y" * 500

    for app, status in ((refusing, 401), (swallowing, 413)):
        guard = RequestGuardMiddleware(app, settings=Settings(max_request_bytes=2048))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as http:
            r = await http.post("/v1/chat/completions", content=chunks(10))
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert len(reads) == 4  # the fifth chunk passed the limit

"""Tests for auth.py: the API-key middleware, key store, limits, reload and CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import gptoss.auth as auth
from gptoss.auth import (
    AuthMiddleware,
    KeysFileError,
    KeyStore,
    NoKeysConfigured,
    Principal,
    check_model_access,
)
from gptoss.auth.limits import RateLimited
from gptoss.errors import APIError
from gptoss.settings import Settings
from tests.conftest import REPO

# Keys used throughout (all >= 16 chars). One per permission.
K_ALL = "sk-test-all-0000000000000000"
K_CHAT = "sk-test-chat-000000000000000"
K_COMP = "sk-test-comp-000000000000000"
K_MODELS = "sk-test-models-0000000000000"
K_GEN = "sk-test-generate-00000000000"
ALL_KEYS = [K_ALL, K_CHAT, K_COMP, K_MODELS, K_GEN]


def make_settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(keys_file=None, api_keys="", auth_disabled=False, public_docs=True, public_metrics=True)
    base.update(kw)
    return Settings(**base)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def write_keys(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    return write_keys(
        tmp_path / "keys.yaml",
        [
            {"name": "admin", "key": K_ALL},
            {"name": "chatter", "key": K_CHAT, "permissions": ["chat"]},
            {"name": "completer", "key": K_COMP, "permissions": ["completions"]},
            {"name": "lister", "key": K_MODELS, "permissions": ["models"]},
            {"name": "bento", "key": K_GEN, "permissions": ["generate"]},
        ],
    )


@pytest.fixture(autouse=True)
def _fresh_global_store():
    auth.reset_key_store()
    yield
    auth.reset_key_store()


# ---------------------------------------------------------------------------------------------
# Helpers: a downstream app and a raw ASGI driver (httpx normalises paths, so raw scopes are
# needed to send the tricks a real server would pass through).
# ---------------------------------------------------------------------------------------------


class Echo:
    """Downstream ASGI app: echoes path and principal; records what reached it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append(scope)
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        p = scope.get("state", {}).get("principal")
        body = json.dumps({"path": scope["path"], "principal": p.name if p else None}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class Resp:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = next(m for m in messages if m["type"] == "http.response.start")
        self.status: int = start["status"]
        self.header_list = [(k.decode(), v.decode()) for k, v in start.get("headers", [])]
        self.headers = {k.lower(): v for k, v in self.header_list}
        self.body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return json.loads(self.body)


def scope_for(
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    key: str | None = None,
    raw_path: bytes | None = None,
    type: str = "http",
) -> dict[str, Any]:
    hdrs = list(headers or [])
    if key is not None:
        hdrs.append((b"authorization", f"Bearer {key}".encode()))
    scope: dict[str, Any] = {
        "type": type,
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": b"",
        "headers": hdrs,
    }
    if type == "http":
        scope["method"] = method
    return scope


async def acall(app: Any, scope: dict[str, Any]) -> Resp:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: dict[str, Any]) -> None:
        messages.append(m)

    await app(scope, receive, send)
    return Resp(messages)


def call(app: Any, path: str, **kw: Any) -> Resp:
    return asyncio.run(acall(app, scope_for(path, **kw)))


def mw(store: KeyStore | None = None, clock: Any = None, app: Any = None, **settings_kw: Any) -> AuthMiddleware:
    extra = {"clock": clock} if clock is not None else {}
    return AuthMiddleware(app or Echo(), store=store, settings=make_settings(**settings_kw), **extra)


def assert_401(r: Resp) -> None:
    assert r.status == 401, r.body
    assert r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key"
    assert err["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------------------------
# Authorization header parsing
# ---------------------------------------------------------------------------------------------

BAD_HEADERS = {
    "no header": [],
    "empty": [(b"authorization", b"")],
    "only spaces": [(b"authorization", b"   ")],
    "Bearer alone": [(b"authorization", b"Bearer")],
    "Bearer and spaces": [(b"authorization", b"Bearer    ")],
    "wrong scheme": [(b"authorization", f"Basic {K_ALL}".encode())],
    "no scheme": [(b"authorization", K_ALL.encode())],
    "trailing newline": [(b"authorization", f"Bearer {K_ALL}\n".encode())],
    "inner space": [(b"authorization", f"Bearer {K_ALL[:10]} {K_ALL[10:]}".encode())],
    "non-ascii": [(b"authorization", f"Bearer {K_ALL}\u00e9".encode())],
    "undecodable": [(b"authorization", b"Bearer " + K_ALL.encode() + b"\xff\xfe")],
    "64 KB": [(b"authorization", b"Bearer " + b"a" * 65536)],
    "64 KB valid prefix": [(b"authorization", f"Bearer {K_ALL}".encode() + b" " * 65536)],
    "two headers": [(b"authorization", f"Bearer {K_ALL}".encode()), (b"authorization", f"Bearer {K_ALL}".encode())],
    "two headers, one bad": [(b"authorization", f"Bearer {K_ALL}".encode()), (b"authorization", b"Bearer nope")],
    "unknown key": [(b"authorization", b"Bearer sk-not-a-configured-key-123")],
    "key prefix": [(b"authorization", f"Bearer {K_ALL[:-1]}".encode())],
}


@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_bad_authorization_is_401(store_file: Path, headers: list[tuple[bytes, bytes]]) -> None:
    app = Echo()
    m = mw(KeyStore(store_file), app=app)
    t0 = time.perf_counter()
    r = call(m, "/v1/models", headers=headers)
    assert time.perf_counter() - t0 < 1.0
    assert_401(r)
    assert app.calls == []
    assert K_ALL not in r.body.decode()


GOOD_HEADERS = {
    "canonical": f"Bearer {K_ALL}",
    "lower-case scheme": f"bearer {K_ALL}",
    "upper-case scheme": f"BEARER {K_ALL}",
    "extra spaces": f"bearer   {K_ALL}  ",
    "leading space": f"  Bearer {K_ALL}",
    "tab": f"Bearer\t{K_ALL}\t",
}


@pytest.mark.parametrize("value", list(GOOD_HEADERS.values()), ids=list(GOOD_HEADERS))
def test_good_authorization_is_accepted(store_file: Path, value: str) -> None:
    r = call(mw(KeyStore(store_file)), "/v1/models", headers=[(b"authorization", value.encode())])
    assert r.status == 200
    assert r.json() == {"path": "/v1/models", "principal": "admin"}


def test_works_through_httpx_and_starlette_request_state(store_file: Path) -> None:
    async def models(request: Request) -> JSONResponse:
        p = auth.get_principal(request)
        return JSONResponse({"name": p.name if p else None, "key_name": request.state.key_name})

    inner = Starlette(routes=[Route("/v1/models", models)])
    app = AuthMiddleware(inner, store=KeyStore(store_file), settings=make_settings())

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            ok = await c.get("/v1/models", headers={"Authorization": f"bearer {K_CHAT}"})
            bad = await c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-key-wrong-key"})
            return ok, bad

    ok, bad = asyncio.run(go())
    assert ok.status_code == 200
    assert ok.json() == {"name": "chatter", "key_name": "chatter"}
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == "Bearer"
    assert bad.json()["error"]["code"] == "invalid_api_key"


# ---------------------------------------------------------------------------------------------
# Open paths and path tricks
# ---------------------------------------------------------------------------------------------

OPEN = ["/health", "/healthz", "/livez", "/readyz"]
DOCS = ["/docs", "/redoc", "/openapi.json", "/docs.json", "/", "/static_content/swagger-ui.css"]


@pytest.mark.parametrize("path", OPEN + DOCS + ["/metrics"])
def test_open_paths_without_key(store_file: Path, path: str) -> None:
    app = Echo()
    r = call(mw(KeyStore(store_file), app=app), path)
    assert r.status == 200
    assert r.json()["principal"] is None
    assert len(app.calls) == 1


@pytest.mark.parametrize("path", DOCS + ["/metrics"])
def test_docs_and_metrics_need_any_key_when_not_public(store_file: Path, path: str) -> None:
    m = mw(KeyStore(store_file), public_docs=False, public_metrics=False)
    assert_401(call(m, path))
    for key in ALL_KEYS:  # any valid key will do
        assert call(m, path, key=key).status == 200


def test_probes_stay_open_when_docs_and_metrics_are_private(store_file: Path) -> None:
    m = mw(KeyStore(store_file), public_docs=False, public_metrics=False)
    for path in OPEN:
        assert call(m, path).status == 200


PREFLIGHT = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"POST")]


def test_cors_preflight_is_open_and_lifespan_passes(store_file: Path) -> None:
    app = Echo()
    m = mw(KeyStore(store_file), app=app)
    r = call(m, "/v1/chat/completions", method="OPTIONS", headers=PREFLIGHT)
    assert r.status == 200 and r.json()["principal"] is None

    async def lifespan() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(_: Any) -> None:
            pass

        await m({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(lifespan())
    assert [c["type"] for c in app.calls] == ["http", "lifespan"]


NOT_PREFLIGHT = {
    "no headers": [],
    "only Origin": PREFLIGHT[:1],
    "only Access-Control-Request-Method": PREFLIGHT[1:],
}


@pytest.mark.parametrize("headers", list(NOT_PREFLIGHT.values()), ids=list(NOT_PREFLIGHT))
def test_options_without_preflight_headers_needs_a_key(store_file: Path, headers: list[tuple[bytes, bytes]]) -> None:
    app = Echo()
    m = mw(KeyStore(store_file), app=app)
    for path in ("/v1/chat/completions", "/admin"):
        assert_401(call(m, path, method="OPTIONS", headers=headers))
    assert app.calls == []
    # With a key it is an ordinary request: the route's permission applies.
    assert call(m, "/v1/chat/completions", method="OPTIONS", headers=headers, key=K_CHAT).status == 200
    assert call(m, "/v1/chat/completions", method="OPTIONS", headers=headers, key=K_GEN).status == 403


def test_preflight_header_names_are_case_insensitive(store_file: Path) -> None:
    headers = [(b"Origin", b"https://app.example"), (b"Access-Control-Request-Method", b"POST")]
    assert call(mw(KeyStore(store_file)), "/v1/models", method="options", headers=headers).status == 200
    assert_401(call(mw(KeyStore(store_file)), "/v1/models", method="GET", headers=headers))  # GET is no preflight


TRICKS = {
    "double slash": ("/v1/models", "//v1/models", None),
    "dot dot": ("/v1/models", "/v1/../v1/models", None),
    "upper case": ("/v1/models", "/V1/models", None),
    "trailing slash": ("/v1/models", "/v1/models/", None),
    "encoded slash": ("/v1/models", "/v1/models", b"/v1%2Fmodels"),
    "encoded slash lower": ("/v1/models", "/v1/models", b"/v1%2fmodels"),
    "double-encoded slash": ("/v1/models", "/v1%2Fmodels", b"/v1%252Fmodels"),
    "health dot dot": ("/v1/models", "/health/../v1/models", None),
    "health encoded dot dot": ("/v1/models", "/health/../v1/models", b"/health%2F..%2Fv1%2Fmodels"),
    "health trailing slash": ("/health", "/health/", None),
    "health upper": ("/health", "/HEALTH", None),
    "encoded health": ("/health", "/health", b"/heal%74h"),
    "path/raw mismatch": ("/health", "/health", b"/v1/models"),
    "static dot dot": ("/v1/models", "/static_content/../v1/models", None),
    "static encoded": ("/v1/models", "/static_content/../v1/models", b"/static_content/..%2Fv1/models"),
    "docs dot dot": ("/docs", "/docs/../docs", None),
}


@pytest.mark.parametrize("case", list(TRICKS.values()), ids=list(TRICKS))
def test_path_tricks_need_a_key(store_file: Path, case: tuple[str, str, bytes | None]) -> None:
    _, path, raw = case
    app = Echo()
    r = call(mw(KeyStore(store_file), app=app), path, raw_path=raw)
    assert_401(r)
    assert app.calls == []


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/generate", "/anything"])
def test_head_needs_a_key(store_file: Path, path: str) -> None:
    assert_401(call(mw(KeyStore(store_file)), path, method="HEAD"))


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/v1/chat/completions", b"/v1%2Fchat%2Fcompletions"),
        ("//v1//chat/completions", None),
        ("/V1/Chat/Completions/", None),
        ("/v1/models/../chat/completions", None),
        ("/health/../v1/chat/completions", None),
    ],
)
def test_tricks_need_the_permission_of_the_normalised_route(store_file: Path, path: str, raw: bytes | None) -> None:
    m = mw(KeyStore(store_file))
    assert call(m, path, raw_path=raw, key=K_MODELS).status == 403  # models key, chat route
    assert call(m, path, raw_path=raw, key=K_GEN).status == 403
    assert call(m, path, raw_path=raw, key=K_CHAT).status == 200
    assert call(m, path, raw_path=raw, key=K_ALL).status == 200


def test_required_permissions_never_less_than_route() -> None:
    rp = auth.required_permissions
    assert rp("/v1/chat/completions") == {"chat"}
    assert rp("/v1/models/gpt-oss-20b") == {"models"}
    assert rp("/v1/models/a/../../chat/completions") == {"chat"}
    assert rp("/health", "/v1/models") == {"models"}  # a raw path that disagrees adds its needs
    assert rp("/v1%2Fchat%2Fcompletions") == {"chat", "all"}  # literal %2F: unknown route too
    assert rp("/metrics") == frozenset()
    assert rp("/admin") == {"all"}


# ---------------------------------------------------------------------------------------------
# Permission matrix
# ---------------------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/gpt-oss-20b"),
    ("POST", "/generate"),
    ("POST", "/v1/responses"),
    ("DELETE", "/v1/responses/resp_1"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/schema.json"),
    ("POST", "/v1/embeddings"),
    ("GET", "/admin/stats"),
]
# key -> expected status for each route above, in order.
MATRIX = {
    K_ALL: [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200],
    K_CHAT: [200, 403, 200, 200, 403, 403, 403, 200, 200, 200, 403, 403],
    K_COMP: [403, 200, 200, 200, 403, 403, 403, 200, 200, 200, 403, 403],
    K_MODELS: [403, 403, 200, 200, 403, 403, 403, 200, 200, 200, 403, 403],
    K_GEN: [403, 403, 403, 403, 200, 403, 403, 200, 200, 200, 403, 403],
}
PERM_OF_ROUTE = ["chat", "completions", "models", "models", "generate"] + ["responses"] * 2 + [None] * 3 + ["all"] * 2


@pytest.mark.parametrize("key", list(MATRIX), ids=["all", "chat", "completions", "models", "generate"])
def test_permission_matrix(store_file: Path, key: str) -> None:
    m = mw(KeyStore(store_file), public_docs=False, public_metrics=False)
    got = [call(m, path, method=method, key=key).status for method, path in ROUTES]
    assert got == MATRIX[key]
    for (method, path), status, perm in zip(ROUTES, got, PERM_OF_ROUTE):
        if status == 403:
            r = call(m, path, method=method, key=key)
            err = r.json()["error"]
            assert err["code"] == "permission_denied"
            assert err["type"] == "permission_error"
            assert f"'{perm}'" in err["message"]
            assert key not in r.body.decode()


def test_principal_permissions() -> None:
    assert Principal("a", frozenset({"all"})).has_permission("generate")
    assert Principal("a", frozenset({"chat"})).has_permission("models")
    assert not Principal("a", frozenset({"generate"})).has_permission("models")
    assert not Principal("a", frozenset({"models"})).has_permission("chat")
    assert Principal("a", frozenset({"responses"})).has_permission("models")  # Responses clients list models too
    assert not Principal("a", frozenset({"chat"})).has_permission("responses")


# ---------------------------------------------------------------------------------------------
# Model access
# ---------------------------------------------------------------------------------------------


def test_check_model_access(tmp_path: Path) -> None:
    entries = [{"name": "m", "key": K_CHAT, "models": ["gpt-oss-20b"]}, {"name": "a", "key": K_ALL}]
    f = write_keys(tmp_path / "k.yaml", entries)
    store = KeyStore(f)
    limited, free = store.authenticate(K_CHAT), store.authenticate(K_ALL)
    assert limited is not None and free is not None
    check_model_access(limited, "gpt-oss-20b")
    check_model_access(free, "other-model")
    check_model_access(None, "other-model")  # auth disabled
    with pytest.raises(APIError) as ei:
        check_model_access(limited, "other-model")
    assert ei.value.status == 403
    assert ei.value.type == "permission_error"
    assert "other-model" in ei.value.message


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------


def limited_store(tmp_path: Path, clock: FakeClock, **limits: int) -> KeyStore:
    entries = [{"name": "lim", "key": K_CHAT, "limits": limits}, {"name": "free", "key": K_ALL}]
    f = write_keys(tmp_path / "k.yaml", entries)
    return KeyStore(f, clock=clock)


def test_rpm_limit_and_window(tmp_path: Path) -> None:
    clock = FakeClock()
    m = mw(limited_store(tmp_path, clock, rpm=2), clock=clock)
    r1 = call(m, "/v1/chat/completions", key=K_CHAT)
    assert r1.status == 200
    assert r1.headers["x-ratelimit-limit-requests"] == "2"
    assert r1.headers["x-ratelimit-remaining-requests"] == "1"
    assert "x-ratelimit-limit-tokens" not in r1.headers
    clock.advance(10)
    assert call(m, "/v1/chat/completions", key=K_CHAT).headers["x-ratelimit-remaining-requests"] == "0"
    clock.advance(10)
    r3 = call(m, "/v1/chat/completions", key=K_CHAT)
    assert r3.status == 429
    err = r3.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert r3.headers["retry-after"] == "40"  # first request leaves the window at t+60
    assert r3.headers["x-ratelimit-limit-requests"] == "2"
    assert r3.headers["x-ratelimit-remaining-requests"] == "0"
    assert r3.headers["x-ratelimit-reset-requests"] == "40s"
    assert call(m, "/v1/chat/completions", key=K_ALL).status == 200  # other keys unaffected
    assert "x-ratelimit-limit-requests" not in call(m, "/v1/models", key=K_ALL).headers
    clock.advance(40)
    assert call(m, "/v1/chat/completions", key=K_CHAT).status == 200
    assert call(m, "/v1/chat/completions", key=K_CHAT).status == 429


def test_retry_after_is_at_least_one(tmp_path: Path) -> None:
    clock = FakeClock()
    m = mw(limited_store(tmp_path, clock, rpm=1), clock=clock)
    assert call(m, "/v1/models", key=K_CHAT).status == 200
    clock.advance(59.9)
    r = call(m, "/v1/models", key=K_CHAT)
    assert r.status == 429 and r.headers["retry-after"] == "1"


def test_tpm_limit_at_admission(tmp_path: Path) -> None:
    clock = FakeClock()
    store = limited_store(tmp_path, clock, tpm=100)
    m = mw(store, clock=clock)
    r = call(m, "/v1/chat/completions", key=K_CHAT)
    assert r.status == 200
    assert r.headers["x-ratelimit-limit-tokens"] == "100"
    assert r.headers["x-ratelimit-remaining-tokens"] == "100"
    p = store.authenticate(K_CHAT)
    auth.reserve_tokens(p, 60)
    clock.advance(5)
    auth.reserve_tokens(p, 40)
    clock.advance(1)
    r = call(m, "/v1/chat/completions", key=K_CHAT)
    assert r.status == 429
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert r.headers["retry-after"] == "54"  # the 60 tokens at t0 leave the window at t0+60
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    clock.advance(54)
    r = call(m, "/v1/chat/completions", key=K_CHAT)
    assert r.status == 200
    assert r.headers["x-ratelimit-remaining-tokens"] == "60"


def test_concurrency_limit_released_after_stream_and_error(tmp_path: Path) -> None:
    clock = FakeClock()
    store = limited_store(tmp_path, clock, concurrency=1)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("downstream failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/v1/chat/completions":  # a long streamed answer
            entered.set()
            await release.wait()
        for chunk in (b"a", b"b"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    m = AuthMiddleware(slow, store=store, settings=make_settings(), clock=clock)

    async def go() -> None:
        first = asyncio.create_task(acall(m, scope_for("/v1/chat/completions", key=K_CHAT)))
        await asyncio.wait_for(entered.wait(), 2)
        second = await acall(m, scope_for("/v1/chat/completions", key=K_CHAT))
        assert second.status == 429
        assert int(second.headers["retry-after"]) >= 1
        assert (await acall(m, scope_for("/v1/models", key=K_ALL))).status == 200  # other key unaffected
        release.set()
        r = await asyncio.wait_for(first, 2)
        assert r.status == 200 and r.body == b"ab"
        assert (await acall(m, scope_for("/v1/chat/completions", key=K_CHAT))).status == 200  # released

    asyncio.run(go())
    admin = write_keys(tmp_path / "k2.yaml", [{"name": "lim", "key": K_ALL, "limits": {"concurrency": 1}}])
    m2 = AuthMiddleware(slow, store=KeyStore(admin, clock=clock), settings=make_settings(), clock=clock)

    async def go2() -> None:
        with pytest.raises(RuntimeError):
            await acall(m2, scope_for("/boom", key=K_ALL))
        assert (await acall(m2, scope_for("/v1/models", key=K_ALL))).status == 200  # released although the app raised

    asyncio.run(go2())


def test_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    lim = auth.RateLimiter(clock)
    p = Principal("p", limits=auth.Limits(rpm=5, tpm=10**9), _limiter=lim)
    for _ in range(2000):
        try:
            lim.acquire(p)
            lim.release(p)
        except RateLimited:
            pass
        lim.reserve(p, 3)
        clock.advance(0.25)
    st = lim._states["p"]
    assert len(st.requests) <= 5
    assert len(st.tokens) <= 61


# ---------------------------------------------------------------------------------------------
# Key store: formats, validation
# ---------------------------------------------------------------------------------------------

SEED = {
    "sk-example-key-1": {"user": "admin", "permissions": ["all"]},
    "sk-example-key-2": {"user": "user1", "permissions": ["chat", "completions"]},
}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_seed_dict_format(tmp_path: Path, fmt: str) -> None:
    f = tmp_path / f"keys.{fmt}"
    f.write_text(json.dumps(SEED, indent=2) if fmt == "json" else yaml.safe_dump(SEED))
    store = KeyStore(f)
    assert store.names == ["admin", "user1"]
    m = mw(store)
    assert call(m, "/v1/chat/completions", key="sk-example-key-2").json()["principal"] == "user1"
    assert call(m, "/generate", key="sk-example-key-2").status == 403
    assert call(m, "/generate", key="sk-example-key-1").status == 200


def test_full_format_and_hashed_keys(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    digest = hashlib.sha256(K_CHAT.encode()).hexdigest()
    f.write_text(
        "keys:\n"
        "  - name: alice\n"
        f"    key: {K_ALL}\n"
        "    permissions: [chat, completions]\n"
        "    models: [gpt-oss-20b]\n"
        "    limits: {rpm: 60, tpm: 100000, concurrency: 4}\n"
        "  - name: bob\n"
        f'    key: "sha256:{digest.upper()}"\n'
    )
    store = KeyStore(f)
    alice, bob = store.authenticate(K_ALL), store.authenticate(K_CHAT)
    assert alice is not None and bob is not None
    assert alice.permissions == {"chat", "completions"}
    assert alice.models == {"gpt-oss-20b"}
    assert alice.limits == auth.Limits(rpm=60, tpm=100000, concurrency=4)
    assert bob.name == "bob" and bob.permissions == {"all"} and bob.models is None
    assert store.authenticate(f"sha256:{digest}") is None  # the hash itself is not a key
    for text in (repr(alice), repr(bob), str(bob), repr(store)):
        assert K_ALL not in text and K_CHAT not in text and digest not in text.lower()


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("keys:\n  - name: a\n    key: short-key\n", "shorter than 16"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n    permissions: [chat, admin]\n", "unknown permission"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: a\n    key: {K_CHAT}\n", "duplicate key name"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: b\n    key: {K_ALL}\n", "same key"),
        (f"{K_ALL}: {{user: a}}\n{K_ALL}: {{user: b}}\n", "duplicate mapping key"),
        ("keys:\n  - name: a\n    key: sha256:abc\n", "64 hex"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n    limits: {{rpm: 0}}\n", "positive integer"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n    limits: {{rps: 3}}\n", "unknown limit"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n    permision: [chat]\n", "unknown field"),
        (f"keys:\n  - key: {K_ALL}\n", "'name'"),
        (f"keys:\n  - name: has space\n    key: {K_ALL}\n", "'name'"),
        (f"keys:\n  - name: a\n    key: {K_ALL}\n    permissions: []\n", "empty"),
        (f"keys: [\n  - name: a\n    key: {K_ALL}\n", "invalid YAML"),
        ("just a string\n", "mapping"),
    ],
)
def test_invalid_files(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(text)
    with pytest.raises(KeysFileError) as ei:
        KeyStore(f)
    assert fragment in str(ei.value)
    for k in (K_ALL, K_CHAT, "short-key"):
        assert k not in str(ei.value)


def test_duplicate_key_in_seed_json(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    f.write_text(f'{{"{K_ALL}": {{"user": "a"}}, "{K_ALL}": {{"user": "b"}}}}')
    with pytest.raises(KeysFileError) as ei:
        KeyStore(f)
    assert K_ALL not in str(ei.value)


def test_env_keys(tmp_path: Path, store_file: Path) -> None:
    k1, k2 = "sk-env-one-0000000000000", "sk-env-two-0000000000000"
    store = KeyStore.from_settings(make_settings(api_keys=f" {k1} ,{k2},"))
    assert store.names == ["env-key-1", "env-key-2"]
    m = mw(store)
    assert call(m, "/admin", key=k2).json()["principal"] == "env-key-2"  # permission all
    both = KeyStore.from_settings(make_settings(keys_file=store_file, api_keys=k1))
    assert "env-key-1" in both.names and "admin" in both.names
    with pytest.raises(KeysFileError) as ei:
        KeyStore.from_settings(make_settings(api_keys="test"))
    assert "shorter than 16" in str(ei.value)
    with pytest.raises(KeysFileError):  # same key in file and env
        KeyStore.from_settings(make_settings(keys_file=store_file, api_keys=K_ALL))


def test_no_keys_configured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(NoKeysConfigured) as ei:
        KeyStore.from_settings(make_settings())
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError)
    assert "python auth.py new-key --name NAME >> keys.yaml" in msg
    assert "GPTOSS_KEYS_FILE=keys.yaml" in msg
    assert "GPTOSS_API_KEYS=" in msg
    assert "GPTOSS_AUTH_DISABLED=true" in msg
    empty = tmp_path / "keys.yaml"
    empty.write_text("keys:\n")
    with pytest.raises(NoKeysConfigured):
        auth.validate_auth_config(make_settings(keys_file=empty))
    app = Echo()
    m = AuthMiddleware(app, settings=make_settings())  # never raises: BentoML builds it in lifespan
    caplog.set_level(logging.ERROR, logger="gptoss.auth")
    for path in ("/v1/models", "/health"):  # fail closed, even the probes
        r = call(m, path)
        assert r.status == 503 and r.json()["error"]["code"] == "auth_not_configured"
    assert app.calls == []
    assert "GPTOSS_KEYS_FILE=keys.yaml" in caplog.text
    empty.write_text("keys: [")
    with pytest.raises(KeysFileError):
        auth.validate_auth_config(make_settings(keys_file=empty))
    with pytest.raises(KeysFileError):
        auth.validate_auth_config(make_settings(keys_file=tmp_path / "missing.yaml"))


def test_validate_auth_config_and_global_store(store_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gptoss.auth")
    settings = make_settings(keys_file=store_file)
    store = auth.validate_auth_config(settings)
    assert store is not None and store is auth.get_key_store(settings)
    assert "5 keys loaded" in caplog.text and "chatter" in caplog.text
    previous = signal.getsignal(signal.SIGHUP) if hasattr(signal, "SIGHUP") else None
    try:
        m = AuthMiddleware(Echo(), settings=settings)  # how BentoML builds it: no store given
        assert call(m, "/v1/chat/completions", key=K_CHAT).status == 200
        assert store._watcher is not None and store._watcher.is_alive()  # file changes are picked up
        if previous is not None:
            assert signal.getsignal(signal.SIGHUP) is not previous  # SIGHUP reloads
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
    for k in ALL_KEYS:
        assert k not in caplog.text


def test_auth_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gptoss.auth")
    settings = make_settings(auth_disabled=True)
    assert auth.validate_auth_config(settings) is None
    assert any(r.levelno == logging.WARNING and "DISABLED" in r.getMessage() for r in caplog.records)
    caplog.clear()
    app = Echo()
    m = AuthMiddleware(app, settings=settings)
    for path in ("/v1/chat/completions", "/generate", "/admin"):
        r = call(m, path)
        assert r.status == 200 and r.json()["principal"] is None
    assert any(r.levelno == logging.WARNING and "DISABLED" in r.getMessage() for r in caplog.records)
    assert auth.get_key_store(settings) is None


# ---------------------------------------------------------------------------------------------
# Reload
# ---------------------------------------------------------------------------------------------


def test_reload_good_and_broken_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    f = write_keys(tmp_path / "k.yaml", [{"name": "old", "key": K_CHAT, "permissions": ["chat"]}])
    store = KeyStore(f)
    m = mw(store)
    before = store.authenticate(K_CHAT)
    assert call(m, "/v1/chat/completions", key=K_CHAT).status == 200

    write_keys(f, [{"name": "new", "key": K_COMP, "permissions": ["completions"]}])
    assert store.reload() is True
    assert_401(call(m, "/v1/chat/completions", key=K_CHAT))  # revoked
    assert call(m, "/v1/completions", key=K_COMP).json()["principal"] == "new"
    assert before is not None and before.name == "old"  # an in-flight request keeps its Principal

    secret = "sk-leaky-secret-in-broken-file-1234"
    f.write_text(f"keys:\n  - name: x\n    key: {secret}\n    permissions: [chat\n  - {K_ALL}: [\n")
    caplog.clear()
    assert store.reload() is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "invalid YAML" in errors[0].getMessage()
    assert call(m, "/v1/completions", key=K_COMP).status == 200  # old keys kept
    f.write_text(f"keys:\n  - name: y\n    key: {secret}\n    permissions: [root]\n")
    assert store.reload() is False
    assert "unknown permission" in caplog.text
    assert call(m, "/v1/completions", key=K_COMP).status == 200
    for k in (secret, K_ALL, K_CHAT, K_COMP, hashlib.sha256(secret.encode()).hexdigest()):
        assert k not in caplog.text


def test_limit_state_survives_reload(tmp_path: Path) -> None:
    clock = FakeClock()
    f = write_keys(tmp_path / "k.yaml", [{"name": "lim", "key": K_CHAT, "limits": {"rpm": 1}}])
    store = KeyStore(f, clock=clock)
    m = mw(store, clock=clock)
    assert call(m, "/v1/models", key=K_CHAT).status == 200
    write_keys(f, [{"name": "lim", "key": K_COMP, "limits": {"rpm": 1}}])  # rotated key, same name
    assert store.reload()
    assert call(m, "/v1/models", key=K_COMP).status == 429
    write_keys(f, [{"name": "other", "key": K_COMP, "limits": {"rpm": 1}}])
    assert store.reload()
    assert call(m, "/v1/models", key=K_COMP).status == 200
    assert "lim" not in store.limiter._states  # state of removed keys is dropped


def test_watcher_reloads_on_change(tmp_path: Path) -> None:
    f = write_keys(tmp_path / "k.yaml", [{"name": "a", "key": K_ALL}])
    store = KeyStore(f)
    store.start_watching(interval=0.02)
    try:
        write_keys(f, [{"name": "a", "key": K_ALL}, {"name": "b", "key": K_CHAT}])
        deadline = time.monotonic() + 3
        while store.authenticate(K_CHAT) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.authenticate(K_CHAT) is not None
    finally:
        store.stop_watching()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write_keys(tmp_path / "k.yaml", [{"name": "a", "key": K_ALL}])
    store = KeyStore(f)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert auth.install_sighup_handler(store) is True
        write_keys(f, [{"name": "b", "key": K_CHAT}])
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 3
        while store.authenticate(K_CHAT) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.authenticate(K_CHAT) is not None
        assert store.authenticate(K_ALL) is None
    finally:
        signal.signal(signal.SIGHUP, previous)

    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(auth.install_sighup_handler(store)))
    caplog.set_level(logging.WARNING, logger="gptoss.auth")
    t.start()
    t.join()
    assert result == [False]
    assert "SIGHUP is unavailable" in caplog.text


# ---------------------------------------------------------------------------------------------
# Websocket
# ---------------------------------------------------------------------------------------------


def test_websocket_needs_a_key(store_file: Path) -> None:
    app = Echo()
    m = mw(KeyStore(store_file), app=app)

    async def ws(key: str | None, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        await m(scope_for(path, key=key, type="websocket"), receive, send)
        return sent

    assert asyncio.run(ws(None))[0] == {"type": "websocket.close", "code": 1008, "reason": "invalid API key"}
    assert asyncio.run(ws(None, "/health"))[0]["code"] == 1008
    assert asyncio.run(ws(K_MODELS))[0]["code"] == 1008  # lacks chat
    assert app.calls == []
    assert asyncio.run(ws(K_CHAT))[0] == {"type": "websocket.accept"}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_new_key_appends_and_authenticates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text("keys:\n")  # as documented: echo "keys:" > keys.yaml
    assert auth.main(["new-key", "--name", "alice", "--permissions", "chat,completions", "--models", "gpt-oss-20b",
                      "--rpm", "60", "--tpm", "1000", "--concurrency", "2"]) == 0
    out = capsys.readouterr()
    with f.open("a") as fh:
        fh.write(out.out)
    alice_key = out.err.strip().splitlines()[-1]  # the key goes to stderr (the terminal), once
    assert "shown once" in out.err
    assert alice_key.startswith("sk-") and len(alice_key) >= 40 and alice_key not in out.out
    assert auth.main(["new-key", "--name", "bob", "--hashed"]) == 0  # the old flag: same as the default
    hashed = capsys.readouterr()
    with f.open("a") as fh:
        fh.write(hashed.out)
    assert auth.main(["new-key", "--name", "carol", "--plain"]) == 0
    plain = capsys.readouterr()
    assert plain.err == ""
    with f.open("a") as fh:
        fh.write(plain.out)

    entries = yaml.safe_load(f.read_text())["keys"]
    assert [e["name"] for e in entries] == ["alice", "bob", "carol"]
    assert entries[0]["key"] == auth.hash_key(alice_key)
    bob_key = hashed.err.strip().splitlines()[-1]
    assert entries[1]["key"] == auth.hash_key(bob_key)
    assert bob_key.startswith("sk-") and bob_key not in hashed.out
    carol_key = entries[2]["key"]
    assert carol_key.startswith("sk-") and len(carol_key) >= 40

    store = KeyStore(f)
    alice = store.authenticate(alice_key)
    assert alice is not None
    assert alice.limits == auth.Limits(rpm=60, tpm=1000, concurrency=2)
    assert alice.models == {"gpt-oss-20b"}
    m = mw(store)
    assert call(m, "/v1/chat/completions", key=alice_key).json()["principal"] == "alice"
    assert call(m, "/generate", key=alice_key).status == 403
    assert call(m, "/generate", key=bob_key).json()["principal"] == "bob"
    assert call(m, "/generate", key=carol_key).json()["principal"] == "carol"

    assert auth.main(["check-file", str(f)]) == 0
    listing = capsys.readouterr().out
    assert "alice: permissions=chat,completions" in listing and "bob: permissions=all" in listing
    assert alice_key not in listing and carol_key not in listing
    with pytest.raises(SystemExit):  # one or the other
        auth.main(["new-key", "--name", "dave", "--plain", "--hashed"])


def test_cli_new_key_appended_by_a_shell(tmp_path: Path) -> None:
    """The README's `auth.py new-key --name alice >> keys.yaml`: a working file, the key on stderr."""
    f = tmp_path / "keys.yaml"
    f.write_text("keys:\n")
    script = REPO / "auth.py"  # the top-level entry point the README names
    with f.open("a") as out:
        done = subprocess.run(
            [sys.executable, str(script), "new-key", "--name", "alice"],
            stdout=out, stderr=subprocess.PIPE, text=True, cwd=script.parent, timeout=60, check=True,
        )
    key = done.stderr.strip().splitlines()[-1]
    assert key not in f.read_text()
    store = KeyStore(f)
    assert store.authenticate(key) is not None and store.names == ["alice"]


def test_cli_errors_and_hash_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert auth.main(["new-key", "--name", "x", "--permissions", "chat,root"]) == 2
    assert "unknown permission" in capsys.readouterr().err
    assert auth.main(["hash-key", K_ALL]) == 0
    assert capsys.readouterr().out.strip() == "sha256:" + hashlib.sha256(K_ALL.encode()).hexdigest()
    assert auth.main(["hash-key", "short"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"keys:\n  - name: a\n    key: {K_ALL}\n    permissions: [nope]\n")
    assert auth.main(["check-file", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and K_ALL not in err


# ---------------------------------------------------------------------------------------------
# Keys-file errors never show a key
# ---------------------------------------------------------------------------------------------

SECRET = "sk-LEAKCANARY-0123456789abcdef"  # recognisable; must never appear in an error or a log

LEAKY_FILES = {
    "seed dict inside the list": (f"keys:\n  - {SECRET}: {{user: a}}\n", "keys[0]"),
    "seed dict under keys:": (f"keys:\n  {SECRET}: {{user: a}}\n", "list"),
    "extra top-level field": (f"keys:\n  - name: a\n    key: {K_ALL}\n{SECRET}: {{user: b}}\n", "top-level"),
    "name and key swapped": (f"keys:\n  - name: {SECRET}\n    key: alice\n", "keys[0]"),
    "name is the key": ("keys:\n  - name: alicealicealicealice\n    key: alicealicealicealice\n", "keys[0]"),
    "key as a permission": (f"keys:\n  - name: a\n    key: {K_ALL}\n    permissions: [{SECRET}]\n", "keys[0] (a)"),
    "key as a limit": (f"keys:\n  - name: a\n    key: {K_ALL}\n    limits: {{{SECRET}: 3}}\n", "keys[0] (a)"),
    "typo next to a key": (f"keys:\n  - name: a\n    key: {SECRET}\n    permision: [chat]\n", "'permision'"),
    "key with a space": (f"keys:\n  - name: a\n    key: '{SECRET} x'\n", "keys[0] (a)"),
    "bare string entry": (f"keys:\n  - {SECRET}\n", "keys[0]"),
    "yaml alias": (f"keys:\n  - name: a\n    key: *{SECRET}\n", "invalid YAML"),
    "yaml tag": (f"keys:\n  - name: a\n    key: !{SECRET} x\n", "invalid YAML"),
    "seed: bad user": (json.dumps({SECRET: {"user": "has space"}}), "entry[0]"),
    "seed: unknown field": (json.dumps({SECRET: {"user": "a", "permision": ["chat"]}}), "entry[0] (a)"),
    "seed: secret as field": (json.dumps({K_ALL: {"user": "a", SECRET: 1}}), "entry[0] (a)"),
    "seed: not a mapping": (json.dumps({SECRET: "admin"}), "entry[0]"),
    "seed: user is the key": (json.dumps({SECRET: {"user": SECRET}}), "entry[0]"),
    "seed: third entry bad": (
        json.dumps({K_ALL: {"user": "a"}, K_CHAT: {"user": "b"}, SECRET: {"user": "c", "permissions": ["root"]}}),
        "entry[2] (c)",
    ),
    "third entry bad": (
        f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: b\n    key: {K_CHAT}\n"
        f"  - name: c\n    key: {SECRET}\n    permissions: [root]\n",
        "keys[2] (c)",
    ),
    "duplicate name": (f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: a\n    key: {SECRET}\n", "keys[1] (a)"),
    "duplicate key": (f"keys:\n  - name: a\n    key: {SECRET}\n  - name: b\n    key: {SECRET}\n", "keys[0] (a)"),
}


def _secret_free(text: str) -> None:
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()
    assert SECRET[3:] not in text  # not even without the prefix
    assert "alicealicealicealice" not in text
    assert hashlib.sha256(SECRET.encode()).hexdigest() not in text


@pytest.mark.parametrize("case", list(LEAKY_FILES.values()), ids=list(LEAKY_FILES))
def test_keys_file_errors_never_show_the_key(
    tmp_path: Path, case: tuple[str, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    text, where = case
    f = tmp_path / "keys.yaml"
    f.write_text(text)
    with pytest.raises(KeysFileError) as ei:
        KeyStore(f)
    message = str(ei.value)
    assert where in message, message
    _secret_free(message)
    _secret_free(repr(ei.value))
    _secret_free("".join(traceback.format_exception(ei.value)))  # what logger.exception would print

    # The same file on a reload: the ERROR log names the entry, never the key.
    write_keys(f, [{"name": "good", "key": K_ALL}])
    f.chmod(0o600)
    store = KeyStore(f)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    f.write_text(text)
    assert store.reload() is False
    assert any(r.levelno == logging.ERROR and where in r.getMessage() for r in caplog.records), caplog.text
    _secret_free(caplog.text)
    assert store.authenticate(K_ALL) is not None

    # And check-file.
    capsys.readouterr()
    assert auth.main(["check-file", str(f)]) == 1
    out = capsys.readouterr()
    assert "INVALID" in out.err and where in out.err
    _secret_free(out.out + out.err)


def test_error_names_the_entry_by_position_and_name(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: bob\n    key: {K_CHAT}\n    limits: {{rpm: 0}}\n")
    with pytest.raises(KeysFileError, match=r"^keys\[1\] \(bob\): limit 'rpm' must be a positive integer"):
        KeyStore(f)
    f.write_text(f"keys:\n  - name: a\n    key: {K_ALL}\n  - name: b c\n    key: {K_CHAT}\n")
    with pytest.raises(KeysFileError, match=r"^keys\[1\]: 'name' must be"):  # an invalid name is not shown
        KeyStore(f)


def test_cli_new_key_refuses_a_key_as_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert auth.main(["new-key", "--name", SECRET]) == 2
    err = capsys.readouterr().err
    assert "looks like an API key" in err
    _secret_free(err)


# ---------------------------------------------------------------------------------------------
# Keys-file permissions
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_warns_once_per_load_when_keys_file_is_not_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING, logger="gptoss.auth")
    f = write_keys(tmp_path / "k.yaml", [{"name": "a", "key": K_ALL}])

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "chmod 600" in r.msg]

    f.chmod(0o600)
    store = KeyStore(f)
    assert store.reload() is True
    assert warnings() == []
    f.chmod(0o640)
    store = KeyStore(f)
    assert len(warnings()) == 1 and "0640" in warnings()[0]
    assert store.reload() is True
    assert len(warnings()) == 2  # once per load
    assert auth.main(["check-file", str(f)]) == 0
    out = capsys.readouterr()
    assert "chmod 600" in out.err and "OK, 1 keys" in out.out
    f.chmod(0o604)
    caplog.clear()
    KeyStore(f)
    assert len(warnings()) == 1
    assert K_ALL not in caplog.text


# ---------------------------------------------------------------------------------------------
# Settings keep GPTOSS_API_KEYS secret
# ---------------------------------------------------------------------------------------------


def test_settings_api_keys_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-settings-secret-0123456789"
    s = Settings(api_keys=key)
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), f"{s}", repr(s.api_keys)):
        assert key not in text
    assert s.api_keys.get_secret_value() == key
    assert Settings().api_keys.get_secret_value() == ""
    monkeypatch.setenv("GPTOSS_API_KEYS", key)
    from_env = Settings()
    assert key not in repr(from_env) and from_env.api_keys.get_secret_value() == key
    assert KeyStore.from_settings(make_settings(api_keys=key)).authenticate(key) is not None


# ---------------------------------------------------------------------------------------------
# A reload of an empty or half-written file keeps the old keys
# ---------------------------------------------------------------------------------------------

BROKEN_RELOADS: dict[str, str | bytes] = {
    "empty": "",
    "blank": "  \n\n",
    "keys: only": "keys:\n",
    "empty list": "keys: []\n",
    "empty mapping": "{}\n",
    "null": "null\n",
    "garbage": "}{:[ ,,\n\t",
    "binary": b"\xff\xfe\x00\x01keys",
    "truncated mid-key": f"keys:\n  - name: a\n    key: {K_ALL[:8]}",
    "truncated mid-entry": f"keys:\n  - name: a\n    key: {K_ALL}\n    permissions: [cha",
    "truncated mid-name": "keys:\n  - na",
    "truncated JSON": json.dumps({K_ALL: {"user": "a"}, K_CHAT: {"user": "b"}})[:30],
}


@pytest.mark.parametrize("content", list(BROKEN_RELOADS.values()), ids=list(BROKEN_RELOADS))
def test_reload_of_empty_or_half_written_file_keeps_old_keys(
    tmp_path: Path, content: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    f = write_keys(tmp_path / "k.yaml", [{"name": "a", "key": K_ALL}, {"name": "c", "key": K_CHAT}])
    store = KeyStore(f)
    m = mw(store)
    caplog.set_level(logging.DEBUG)
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    assert store.reload() is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Keeping the 2 keys" in errors[0].getMessage()
    assert store.names == ["a", "c"]
    assert call(m, "/v1/models", key=K_ALL).json()["principal"] == "a"
    assert call(m, "/v1/models", key=K_CHAT).json()["principal"] == "c"
    for k in (K_ALL, K_CHAT, K_ALL[:8]):
        assert k not in caplog.text
    write_keys(f, [{"name": "b", "key": K_COMP}])  # the write completes: picked up as usual
    assert store.reload() is True
    assert store.names == ["b"] and store.authenticate(K_ALL) is None


def test_empty_file_reload_is_fine_when_it_had_no_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "k.yaml"
    f.write_text("keys:\n")
    f.chmod(0o600)
    env = "sk-env-only-0000000000000"
    store = KeyStore(f, env)  # keys from GPTOSS_API_KEYS only, an empty file next to them
    caplog.set_level(logging.WARNING)
    f.write_text("keys: []\n")
    assert store.reload() is True
    assert caplog.records == []
    assert store.authenticate(env) is not None
    write_keys(f, [{"name": "a", "key": K_ALL}])
    assert store.reload() is True and store.names == ["a", "env-key-1"]
    f.write_text("")  # the file's keys would all go, the env key would stay: still refused
    assert store.reload() is False and store.names == ["a", "env-key-1"]


def test_deeply_nested_file_is_a_keys_file_error(tmp_path: Path) -> None:
    f = tmp_path / "k.yaml"
    for text in ("[" * 100_000, "{" + '"a": {' * 100_000):
        f.write_text(text)
        with pytest.raises(KeysFileError):
            KeyStore(f)


# ---------------------------------------------------------------------------------------------
# Token reservations
# ---------------------------------------------------------------------------------------------


def tpm_principal(tmp_path: Path, clock: FakeClock, tpm: int = 1000, **limits: int) -> tuple[KeyStore, Principal]:
    store = limited_store(tmp_path, clock, tpm=tpm, **limits)
    p = store.authenticate(K_CHAT)
    assert p is not None
    return store, p


def assert_tpm_429(err: APIError) -> None:
    assert err.status == 429
    assert (err.type, err.code) == ("rate_limit_error", "rate_limit_exceeded")
    assert err.body()["error"].keys() == {"message", "type", "param", "code"}
    assert err.headers["x-ratelimit-limit-tokens"] == "1000"


def test_concurrent_reservations_stay_within_tpm(tmp_path: Path) -> None:
    clock = FakeClock()
    store, p = tpm_principal(tmp_path, clock)
    barrier = threading.Barrier(5)
    admitted: list[auth.Reservation] = []
    refused: list[APIError] = []
    lock = threading.Lock()

    def go() -> None:
        barrier.wait()
        try:
            r = auth.reserve_tokens(p, 300)
        except APIError as e:
            with lock:
                refused.append(e)
        else:
            with lock:
                admitted.append(r)

    threads = [threading.Thread(target=go) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(admitted) == 3 and len(refused) == 2
    for e in refused:
        assert_tpm_429(e)
        assert e.headers["retry-after"] == "60"  # the whole window must pass
        assert e.headers["x-ratelimit-remaining-tokens"] == "100"
        assert "1000 tokens per minute" in e.message and "300" in e.message
    assert store.limiter._states["lim"].token_sum == 900
    # The middleware's own admission check sees the reserved tokens too.
    admitted.append(auth.reserve_tokens(p, 100))
    r = call(mw(store, clock=clock), "/v1/chat/completions", key=K_CHAT)
    assert r.status == 429 and r.headers["x-ratelimit-remaining-tokens"] == "0"


def test_settle_refunds_the_unused_part_once(tmp_path: Path) -> None:
    clock = FakeClock()
    store, p = tpm_principal(tmp_path, clock)
    r1, r2, r3 = (auth.reserve_tokens(p, 300) for _ in range(3))
    clock.advance(10)
    with pytest.raises(APIError) as ei:
        auth.reserve_tokens(p, 300)
    assert_tpm_429(ei.value)
    assert ei.value.headers["retry-after"] == "50"  # the reservations leave the window at t0+60
    r1.settle(100)  # used 100 of 300: 200 back
    assert r1.settled
    r4 = auth.reserve_tokens({"state": {"principal": p}}, 300)  # fits now (700 + 300); a scope works too
    assert r4.tokens == 300
    r1.settle(0)  # idempotent: nothing more comes back
    with pytest.raises(APIError):
        auth.reserve_tokens(p, 1)
    r2.settle(300)  # used all of it: nothing back
    with pytest.raises(APIError):
        auth.reserve_tokens(p, 1)
    r3.settle(250)
    auth.reserve_tokens(p, 50)
    with pytest.raises(APIError):
        auth.reserve_tokens(p, 1)
    assert store.limiter._states["lim"].token_sum == 1000


def test_reservations_leave_the_window(tmp_path: Path) -> None:
    clock = FakeClock()
    store, p = tpm_principal(tmp_path, clock)
    old = auth.reserve_tokens(p, 1000)
    clock.advance(59)
    with pytest.raises(APIError) as ei:
        auth.reserve_tokens(p, 1)
    assert ei.value.headers["retry-after"] == "1"
    clock.advance(1)
    new = auth.reserve_tokens(p, 1000)  # the old reservation is 60 s old: out of the window
    old.settle(0)  # settled after it left the window: refunds nothing from the new one
    with pytest.raises(APIError):
        auth.reserve_tokens(p, 1)
    assert store.limiter._states["lim"].token_sum == 1000
    new.settle(1200)  # used more than reserved (a larger prompt than counted): the excess counts
    assert store.limiter._states["lim"].token_sum == 1200
    clock.advance(60)
    auth.reserve_tokens(p, 1000)


def test_request_larger_than_tpm_can_never_fit(tmp_path: Path) -> None:
    clock = FakeClock()
    store, p = tpm_principal(tmp_path, clock)
    for _ in range(2):  # the window is empty, and stays so: a refused reservation holds nothing
        with pytest.raises(APIError) as ei:
            auth.reserve_tokens(p, 1001)
        err = ei.value
        assert_tpm_429(err)
        assert "can never fit" in err.message and "1001" in err.message
        assert err.headers["x-should-retry"] == "false" and "retry-after" not in err.headers
        assert err.headers["x-ratelimit-remaining-tokens"] == "1000"
    auth.reserve_tokens(p, 1000)  # exactly the limit fits an empty window


def test_reservation_no_ops(tmp_path: Path) -> None:
    clock = FakeClock()
    store = limited_store(tmp_path, clock, rpm=5)  # "lim" has no tpm; "free" has no limits
    for who in (None, {}, store.authenticate(K_CHAT), store.authenticate(K_ALL)):
        r = auth.reserve_tokens(who, 10**12)
        assert r.tokens == 0 and not r.settled
        r.settle(10**12)
        r.settle(5)
        assert r.settled
    assert "lim" not in store.limiter._states and "free" not in store.limiter._states
    _, p = tpm_principal(tmp_path, clock, tpm=10)
    zero = auth.reserve_tokens(p, 0)
    zero.settle(0)
    assert zero.tokens == 0 and "lim" not in store.limiter._states
    assert "sk-" not in repr(auth.reserve_tokens(p, 5))


def test_settle_after_the_key_was_removed(tmp_path: Path) -> None:
    clock = FakeClock()
    store, p = tpm_principal(tmp_path, clock, tpm=100)
    r = auth.reserve_tokens(p, 100)
    write_keys(tmp_path / "k.yaml", [{"name": "other", "key": K_ALL}])
    assert store.reload()
    assert "lim" not in store.limiter._states
    r.settle(0)  # the state it belonged to is gone: nothing to refund, no error
    write_keys(tmp_path / "k.yaml", [{"name": "lim", "key": K_CHAT, "limits": {"tpm": 100}}])
    assert store.reload()
    p2 = store.authenticate(K_CHAT)
    auth.reserve_tokens(p2, 100)
    assert store.limiter._states["lim"].token_sum == 100

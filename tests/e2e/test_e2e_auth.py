"""API keys through the real ``bentoml serve``: the ``openai`` SDK raises the mapped exceptions."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import CHAT_KEY, LIMITED_KEY, MODELS_KEY, OTHER_MODEL_KEY, RemoteServer

MODEL = "gpt-oss-20b"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("key", ["sk-wrong-key-0123456789abcdef", "short", "x" * 70_000])
def test_bad_key_is_authentication_error(server: RemoteServer, key: str):
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(api_key=key).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert info.value.code == "invalid_api_key"
    assert info.value.response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert key not in info.value.response.text or not key


@pytest.mark.parametrize("path", ["/v1/models", "//v1/models", "/v1/../v1/models", "/V1/models", "/v1%2Fmodels", "/generate"])
def test_no_route_answers_without_key(server: RemoteServer, path: str):
    r = httpx.request("POST" if path == "/generate" else "GET", server.url(path), json={"prompt": "x"} if path == "/generate" else None)
    # 401, or 404 where the HTTP guard (which runs before the key check) does not know the path.
    assert r.status_code in (401, 404), (path, r.status_code)
    assert r.json()["error"]["code"] == ("invalid_api_key" if r.status_code == 401 else "not_found")


def test_open_paths(server: RemoteServer):
    for path in ("/health", "/healthz", "/livez", "/readyz", "/docs", "/openapi.json"):
        assert httpx.get(server.url(path)).status_code == 200, path


def test_permission_denied(server: RemoteServer):
    with pytest.raises(openai.PermissionDeniedError):
        server.client(api_key=MODELS_KEY).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    with pytest.raises(openai.PermissionDeniedError):
        server.client(api_key=CHAT_KEY).completions.create(model=MODEL, prompt="x", max_tokens=1)
    # a chat key may use chat and list models
    assert server.client(api_key=CHAT_KEY).models.list().data[0].id == MODEL
    assert server.client(api_key=CHAT_KEY).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1).choices


def test_model_not_allowed_for_key(server: RemoteServer):
    with pytest.raises(openai.PermissionDeniedError) as info:
        server.client(api_key=OTHER_MODEL_KEY).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert info.value.param == "model"


def test_rate_limit(server: RemoteServer):
    client = server.client(api_key=LIMITED_KEY)
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    client.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        client.models.list()
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_options_needs_a_key_unless_cors_preflight(server: RemoteServer):
    url = server.url("/v1/chat/completions")
    bare = httpx.options(url)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert httpx.options(url, headers={"Origin": "https://app.example"}).status_code == 401
    preflight = httpx.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code != 401  # past auth; whatever the app answers to a preflight

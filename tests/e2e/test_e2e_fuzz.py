"""Mutated request bodies (wrong types, out-of-range values, odd content) never get a 5xx, and
every 2xx body, streamed or not, conforms to OpenAI's published schema.

A bounded, seeded fuzz in the spirit of schemathesis, but starting from valid chat and
completion bodies so that mutations reach the deep validation paths (a random `model` string
would stop every request at 404). Hand-written valid requests cover the shapes the fuzz rarely
reaches (tool calls, logprobs, n > 1, usage chunks, echo); see tests/openai_schema.py.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import openai_schema as S
from tests.conftest import ADMIN_KEY, RemoteServer

# The end-to-end API suite: it runs on every engine selected with --engines.
pytestmark = pytest.mark.engines

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"

BAD: list[Any] = [
    None, -1, 0, 1, 2.5, 1e308, -1e308, "x", "", [], [1], {}, {"a": 1}, True, False, "\u0000",
    "日本" * 50, 10**20, [None], [{"type": "image_url"}], {"effort": "low"},
]
CHAT = {
    "model": "gpt-oss-20b",
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ],
    "max_tokens": 4,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "temperature": 0.5, "top_p": 0.9, "n": 1, "stop": ["x"], "logprobs": True,
    "top_logprobs": 2, "seed": 1, "stream": False, "stream_options": {"include_usage": True},
    "logit_bias": {"5": 1}, "presence_penalty": 0.1, "frequency_penalty": 0.1, "reasoning_effort": "low",
    "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "max_completion_tokens": 4,
}
COMPLETION = {
    "model": "gpt-oss-20b", "prompt": "hello", "max_tokens": 4, "echo": True, "logprobs": 2, "n": 1,
    "stop": "x", "stream": False, "seed": 3, "temperature": 1, "logit_bias": {"7": -1},
}


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (one data line per event here)."""
    events = [e for e in text.split("\n\n") if e.strip()]
    payloads = []
    for event in events:
        lines = [line for line in event.split("\n") if not line.startswith(":")]  # ":" lines are comments
        assert lines and all(line.startswith("data: ") for line in lines), event
        payloads.append("\n".join(line[len("data: ") :] for line in lines))
    return payloads


def check_2xx(route: str, r: httpx.Response) -> list[dict[str, Any]]:
    """Validate a 2xx answer against OpenAI's spec; returns the JSON body or the stream's chunks."""
    assert 200 <= r.status_code < 300, r.text
    if not r.headers["content-type"].startswith("text/event-stream"):
        body = r.json()
        S.validate_response(S.CHAT_COMPLETION if route == CHAT_ROUTE else S.COMPLETION, body)
        return [body]
    payloads = sse_data(r.text)
    assert payloads and payloads[-1] == "[DONE]", r.text[-500:]
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert "error" not in chunk, f"an error event in a 200 stream: {chunk}"
        if route == CHAT_ROUTE:
            S.validate_response(S.CHAT_COMPLETION_CHUNK, chunk)
        else:
            S.validate_response(S.COMPLETION, chunk, chunk=True)
    return chunks


def _paths(obj: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


def _mutate(body: Any, rng: random.Random) -> Any:
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(body)))
        if not path:
            continue
        new = copy.deepcopy(body)
        cur = new
        try:
            for key in path[:-1]:
                cur = cur[key]
            cur[path[-1]] = rng.choice(BAD)
        except (TypeError, KeyError, IndexError):
            continue
        body = new
    if isinstance(body, dict) and rng.random() < 0.3:
        body["stream"] = True
    return body


def admin_client() -> httpx.Client:
    return httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"})


@pytest.mark.parametrize("route,base", [(CHAT_ROUTE, CHAT), (COMPLETIONS_ROUTE, COMPLETION)])
def test_mutated_bodies_never_5xx(server: RemoteServer, route: str, base: dict):
    rng = random.Random(1234)
    with admin_client() as client:
        check_2xx(route, client.post(server.url(route), json=base))  # the seed body is valid
        for _ in range(60):
            body = _mutate(base, rng)
            r = client.post(server.url(route), json=body)
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
            else:
                check_2xx(route, r)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# A named tool_choice prefills the whole call header, so even random weights answer with a call.
CALL = {"type": "function", "function": {"name": "get_weather"}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "messages": ASK, "max_tokens": 8, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "prompt": "Once upon a time", "max_tokens": 4, **fields}


VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "chat plain": (CHAT_ROUTE, chat()),
    "chat length": (CHAT_ROUTE, chat(max_tokens=1, reasoning_effort="low")),
    "chat tools": (CHAT_ROUTE, chat(tools=TOOLS, tool_choice="auto", max_tokens=24)),
    "chat tool required": (CHAT_ROUTE, chat(tools=TOOLS, tool_choice="required", max_tokens=24)),
    "chat tool call": (CHAT_ROUTE, chat(tools=TOOLS, tool_choice=CALL, max_tokens=16, n=2)),
    "chat tool history": (
        CHAT_ROUTE,
        chat(
            tools=TOOLS,
            messages=[
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
        ),
    ),
    "chat logprobs": (CHAT_ROUTE, chat(logprobs=True, top_logprobs=3, temperature=0)),
    "chat n=2": (CHAT_ROUTE, chat(n=2, seed=7, temperature=1)),
    "chat no reasoning": (CHAT_ROUTE, chat(include_reasoning=False, stop=["e"])),
    "chat largest seed n=2": (CHAT_ROUTE, chat(seed=2**64 - 1, n=2)),  # once an engine crash
    "chat stream": (CHAT_ROUTE, chat(stream=True)),
    "chat stream usage": (CHAT_ROUTE, chat(stream=True, stream_options={"include_usage": True}, logprobs=True)),
    "chat stream tools n=2": (
        CHAT_ROUTE,
        chat(stream=True, n=2, tools=TOOLS, tool_choice=CALL, max_tokens=16, stream_options={"include_usage": True}),
    ),
    "completion plain": (COMPLETIONS_ROUTE, completion()),
    "completion echo logprobs": (COMPLETIONS_ROUTE, completion(echo=True, logprobs=2)),
    "completion batch n=2": (COMPLETIONS_ROUTE, completion(prompt=["Hello", "World"], n=2, seed=2**64 - 1)),
    "completion token ids": (COMPLETIONS_ROUTE, completion(prompt=[[1, 2, 3], [200, 201]], logprobs=0)),
    "completion stop": (COMPLETIONS_ROUTE, completion(stop=["e"], max_tokens=8)),
    "completion stream": (COMPLETIONS_ROUTE, completion(stream=True)),
    "completion stream echo usage": (
        COMPLETIONS_ROUTE,
        completion(stream=True, echo=True, logprobs=1, n=2, stream_options={"include_usage": True}),
    ),
}


@pytest.mark.parametrize("route,body", VALID.values(), ids=VALID.keys())
def test_valid_requests_match_openai_schema(server: RemoteServer, route: str, body: dict[str, Any]):
    with admin_client() as client:
        parts = check_2xx(route, client.post(server.url(route), json=body))
    n = body.get("n", 1) * (len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1)
    if not body.get("stream"):
        assert sorted(c["index"] for c in parts[0]["choices"]) == list(range(n))
        assert "usage" in parts[0]
    elif (body.get("stream_options") or {}).get("include_usage"):
        assert parts[-1]["choices"] == [] and parts[-1]["usage"]["total_tokens"] > 0
        assert all(p.get("usage") is None for p in parts[:-1])
    else:
        assert all(p.get("usage") is None for p in parts)
    if body.get("tool_choice") == CALL:  # the shapes under test were really produced
        if body.get("stream"):
            calls = [c for p in parts for ch in p["choices"] for c in ch["delta"].get("tool_calls", ())]
        else:
            calls = [c for ch in parts[0]["choices"] for c in ch["message"].get("tool_calls", ())]
        assert {c["function"]["name"] for c in calls if "name" in c.get("function", {})} == {"get_weather"}, parts


def test_models_match_openai_schema(server: RemoteServer):
    with admin_client() as client:
        listing = client.get(server.url("/v1/models"))
        card = client.get(server.url("/v1/models/gpt-oss-20b"))
    assert listing.status_code == 200 and card.status_code == 200
    S.validate_response(S.MODEL_LIST, listing.json())
    S.validate_response(S.MODEL, card.json())
    assert listing.json()["data"] == [card.json()]


@pytest.mark.parametrize(
    "route,body,param",
    [
        (CHAT_ROUTE, chat(logit_bias={"99999999999999999999": 1}), "logit_bias"),  # once an engine crash
        (COMPLETIONS_ROUTE, completion(logit_bias={"201088": 1}), "logit_bias"),
        (
            CHAT_ROUTE,
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}),
            "response_format.json_schema.schema",
        ),
        (CHAT_ROUTE, chat(functions=[{"name": "f"}]), "functions"),
        (COMPLETIONS_ROUTE, completion(prompt=["a"] * 9, n=8), "n"),
    ],
)
def test_requests_we_cannot_honour_are_a_400(server: RemoteServer, route: str, body: dict[str, Any], param: str):
    with admin_client() as client:
        r = client.post(server.url(route), json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param

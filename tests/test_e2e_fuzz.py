"""Mutated request bodies (wrong types, out-of-range values, odd content) never get a 5xx.

A bounded, seeded fuzz in the spirit of schemathesis, but starting from valid chat and
completion bodies so that mutations reach the deep validation paths (a random `model` string
would stop every request at 404).
"""

from __future__ import annotations

import copy
import random
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY, RemoteServer

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


@pytest.mark.parametrize("route,base", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_mutated_bodies_never_5xx(server: RemoteServer, route: str, base: dict):
    rng = random.Random(1234)
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        assert client.post(server.url(route), json=base).status_code == 200  # the seed body is valid
        for _ in range(60):
            body = _mutate(base, rng)
            r = client.post(server.url(route), json=body)
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text

"""The chat request as Harmony gets it: typed parts, flattened text, and a 400 naming the field for what
cannot be rendered, streamed or not (HarmonyInputError -> api_error_from)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gptoss.api.app import create_app
from gptoss.api.common.serving import Backend
from gptoss.harmony.vocab import load_encoding
from gptoss.settings import Settings

MODEL = "gpt-oss-20b"
USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


ENC = load_encoding()


class Reached(Exception):
    """The request got past rendering."""


class RecordingEngine:
    """Ready; records the first request that reaches it and stops there."""

    max_context = 8192
    ready = True
    prompt: str | None = None

    def submit(self, request: Any) -> Any:
        self.prompt = ENC.decode(request.prompt_ids)
        raise Reached


@pytest.fixture()
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture()
def post(engine):
    app = create_app(Backend(engine, ENC, Settings()))

    async def send(messages: list[dict[str, Any]], **fields: Any) -> httpx.Response:
        # raise_app_exceptions: an error that escapes the exception handlers fails the test
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **fields})

    return send


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "messages, param, fragment, code",
    [
        (
            [USER, {"role": "tool", "tool_call_id": "nope", "content": "r"}],
            "messages[1].tool_call_id",
            "unknown tool_call_id 'nope'",
            None,
        ),
        (
            [USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "a b", "arguments": "{}"}}]}],
            "messages[1].tool_calls[0].function.name",
            "invalid function name 'a b'",
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[1]",
            "text-only",
            "invalid_value",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}],
            "messages[0].content[0]",
            "input_audio",
            "invalid_value",
        ),
    ],
)
async def test_unrenderable_chat_is_a_400(post, engine, stream, messages, param, fragment, code):
    r = await post(messages, stream=stream)
    assert engine.prompt is None
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert fragment in error["message"]


async def test_typed_request_parts_reach_the_prompt(post, engine):
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]},
        USER,
        {"role": "assistant", "content": None, "reasoning_content": "Use f.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
    ]
    tool = {"type": "function", "function": {"name": "f", "description": "Does f", "parameters": {"type": "object"}}}
    choice = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(Reached):
        await post(messages, tools=[tool], tool_choice=choice, reasoning_effort="low")
    prompt = engine.prompt or ""
    assert "Reasoning: low" in prompt
    assert "# Instructions\n\nBe\nbrief." in prompt  # text parts joined with "\n" (content_text, as vLLM)
    assert "// Does f\ntype f = " in prompt
    assert "<|start|>assistant<|channel|>analysis<|message|>Use f.<|end|>" in prompt
    assert "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>" in prompt
    assert "<|start|>functions.f to=assistant<|channel|>commentary<|message|>r1\nr2<|end|>" in prompt
    assert prompt.endswith("<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>")



async def test_long_whitespace_runs_are_refused_before_rendering(post, engine):
    """Harmony's encoder is quadratic in a whitespace run and holds the GIL: such input is a 400."""
    import time

    started = time.monotonic()
    r = await post([{"role": "user", "content": "hi" + " " * 200_000}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0]"
    assert time.monotonic() - started < 2.0
    tools = [{"type": "function", "function": {"name": "f", "description": "x" + "\n" * 5000}}]
    r = await post([USER], tools=tools)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0]"
    with pytest.raises(Reached):  # runs up to the limit are rendered and reach the engine
        await post([{"role": "user", "content": ("a" + " " * 1000) * 5}])
    assert engine.prompt is not None and " " * 1000 in engine.prompt

"""The HTTP layer over a fake engine that emits real Harmony tokens (cf. gpt-oss's responses_api tests).

The tiny random model never writes valid Harmony, so reasoning, final answers and tool calls are
exercised here: the routes, the parser and the SSE framing, with the official SDK as client.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from gptoss.api.app import create_app
from gptoss.api.common.serving import Backend
from gptoss.engine.types import GenerationRequest, SequenceFailed, TokenEvent
from gptoss.harmony.vocab import load_encoding
from gptoss.settings import Settings

ENC = load_encoding()
MODEL = "gpt-oss-20b"
REASON_THEN_ANSWER = (
    "<|channel|>analysis<|message|>The user greets; answer kindly.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there! 👋<|return|>"
)
TOOL_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
)


class FakeStream:
    def __init__(
        self, tokens: list[int], max_tokens: int, stops: tuple[int, ...], fail_after: int | None = None
    ) -> None:
        self.request_id = "fake"
        self._fail_after = fail_after
        self._given = 0
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.cancelled = False
        for i, tok in enumerate(tokens[:max_tokens]):
            last = i == len(tokens) - 1 or i == max_tokens - 1 or tok in stops
            finish = ("stop" if tok in stops else "length") if last else None
            self._events.put_nowait(TokenEvent(tok, -0.5, ((tok, -0.5),), finish))
            if last:
                break
        self._done = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done or self.cancelled:
            raise StopAsyncIteration
        await asyncio.sleep(0)  # one token per event-loop turn, like a real stream
        if self._fail_after is not None and self._given >= self._fail_after:
            self._done = True
            raise SequenceFailed("sampling failed (injected)")
        self._given += 1
        ev = await self._events.get()
        self._done = ev.finish_reason is not None
        return ev

    def ready_events(self) -> list[TokenEvent]:
        return []

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeEngine:
    """Answers every request with the same scripted Harmony completion."""

    script: str
    max_context: int = 8192
    ready: bool = True
    requests: list[GenerationRequest] = field(default_factory=list)
    fail_after: int | None = None  # streams raise SequenceFailed after this many tokens
    app: Any = None  # the app serving it (set by the client_for fixture)

    def submit(self, request: GenerationRequest) -> FakeStream:
        self.requests.append(request)
        tokens = ENC.encode(self.script, allowed_special="all")
        return FakeStream(tokens, request.params.max_tokens, request.params.stop_token_ids, self.fail_after)


@pytest.fixture()
def client_for():
    """An app of its own over a FakeEngine: (SDK client, engine); ``engine.app`` is the ASGI app."""

    def make(script: str, **settings) -> tuple[openai.AsyncOpenAI, FakeEngine]:
        engine = FakeEngine(script)
        engine.app = create_app(Backend(engine, ENC, Settings(**settings)))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=engine.app), base_url="http://test")
        return openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0), engine

    return make


async def test_reasoning_and_answer_split(client_for):
    client, engine = client_for(REASON_THEN_ANSWER)
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    msg = r.choices[0].message
    assert msg.content == "Hello there! 👋"
    assert msg.model_extra["reasoning_content"] == "The user greets; answer kindly."
    assert msg.model_extra["reasoning"] == "The user greets; answer kindly."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    assert r.usage.completion_tokens == len(ENC.encode(REASON_THEN_ANSWER, allowed_special="all"))
    assert engine.requests[0].params.stop_token_ids  # <|return|> and <|call|> end generation


async def test_stream_gives_same_message(client_for):
    client, _ = client_for(REASON_THEN_ANSWER)
    full = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    content, reasoning, finishes = "", "", []
    async for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            reasoning += (ch.delta.model_extra or {}).get("reasoning_content") or ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert content == full.choices[0].message.content
    assert reasoning == full.choices[0].message.model_extra["reasoning_content"]
    assert finishes == ["stop"]


async def test_reasoning_field_setting_and_include_reasoning(client_for):
    client, _ = client_for(REASON_THEN_ANSWER, reasoning_field="reasoning")
    msg = (await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])).choices[0].message
    assert "reasoning" in msg.model_extra and "reasoning_content" not in msg.model_extra
    msg = (
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"include_reasoning": False}
        )
    ).choices[0].message
    assert not (msg.model_extra or {}).get("reasoning") and msg.content == "Hello there! 👋"


async def test_tool_call_non_streamed_and_streamed(client_for):
    client, _ = client_for(TOOL_CALL)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )
    deltas, finish = [], None
    async for chunk in stream:
        for ch in chunk.choices:
            deltas += ch.delta.tool_calls or []
            finish = ch.finish_reason or finish
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert all(d.index == 0 for d in deltas)
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert finish == "tool_calls"


async def test_stop_string_inside_answer(client_for):
    client, _ = client_for(REASON_THEN_ANSWER)
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stop=["there"])
    assert r.choices[0].message.content == "Hello " and r.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stop=["there"], stream=True
    )
    text = "".join([ch.delta.content or "" async for chunk in stream for ch in chunk.choices])
    assert text == "Hello "


async def test_length_cut_in_reasoning_leaves_no_content(client_for):
    client, _ = client_for(REASON_THEN_ANSWER)
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6)
    assert r.choices[0].finish_reason == "length"
    assert not r.choices[0].message.content  # reasoning never leaks into content
    assert r.usage.completion_tokens == 6


async def test_health_and_not_ready(client_for):
    client, engine = client_for(REASON_THEN_ANSWER)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=engine.app), base_url="http://test") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        engine.ready = False
        r = await http.get("/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503


async def test_unknown_route_and_method_are_openai_shaped(client_for):
    _, engine = client_for(REASON_THEN_ANSWER)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=engine.app), base_url="http://test") as http:
        r = await http.get("/v1/nope")
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = await http.get("/v1/chat/completions")
        assert r.status_code == 405 and "error" in r.json()


async def test_engine_failure_mid_stream_is_an_error_event_then_done(client_for):
    """Headers are out: the failure arrives as an OpenAI-shaped SSE error event, then [DONE]."""
    _, engine = client_for(REASON_THEN_ANSWER)
    engine.fail_after = 3
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=engine.app), base_url="http://test") as http:
        r = await http.post("/v1/chat/completions", json=body)
        events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
        assert r.status_code == 200 and events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "generation_failed"
        assert all("error" not in json.loads(e) for e in events[:-2])
        r = await http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "stream": True})
        events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "generation_failed"


async def test_engine_failure_without_stream_is_a_500_in_openai_shape(client_for):
    client, engine = client_for(REASON_THEN_ANSWER)
    engine.fail_after = 2
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 500 and info.value.body["code"] == "generation_failed"


class Budget:
    """A caller's token budget as the routes see it (serving.Admission), recording what was held."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self.held: list[int] = []
        self.settled: list[int] = []

    def limit(self) -> int | None:
        return self._limit

    def reserve(self, tokens: int):
        self.held.append(tokens)
        budget = self

        class Hold:
            def settle(self, used: int) -> None:
                budget.settled.append(used)

        return Hold()


async def test_default_max_tokens_shrinks_to_the_key_budget_and_the_rest_is_given_back(client_for):
    from gptoss.api.chat.protocol import ChatCompletionRequest
    from gptoss.api.chat.serving import ChatHandler

    _, engine = client_for(REASON_THEN_ANSWER)
    handler = ChatHandler(engine.app.state.backend)
    budget = Budget(300)
    req = ChatCompletionRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2})
    job = await handler.start(req, admission=budget)
    prompt = job.prompt_tokens
    assert [r.params.max_tokens for r in engine.requests] == [(300 - prompt) // 2] * 2
    assert budget.held == [prompt + 2 * ((300 - prompt) // 2)]
    await job.response()
    job.settle()
    assert budget.settled == [job.usage()["total_tokens"]]
    explicit = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    )
    job = await handler.start(explicit, admission=budget)  # what the caller asked for is reserved as is
    assert engine.requests[-1].params.max_tokens == 500 and budget.held[-1] == job.prompt_tokens + 500
    job.cancel()


async def test_a_stream_whose_client_left_before_the_first_chunk_still_ends_its_job(client_for):
    """The job is cancelled and its tokens settled however the response ends (here: never started)."""
    from gptoss.api.app import _JobStream
    from gptoss.api.chat.protocol import ChatCompletionRequest
    from gptoss.api.chat.serving import ChatHandler

    _, engine = client_for(REASON_THEN_ANSWER)
    handler = ChatHandler(engine.app.state.backend)
    budget = Budget(10_000)
    req = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
    )
    job = await handler.start(req, admission=budget)

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        raise OSError("the client is gone")

    request = type("R", (), {"scope": {}})()
    from starlette.requests import ClientDisconnect

    with pytest.raises((OSError, ClientDisconnect)):
        await _JobStream(request, job)({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert budget.settled == [job.usage()["total_tokens"]]
    assert all(r.stream.cancelled for r in job.runs)

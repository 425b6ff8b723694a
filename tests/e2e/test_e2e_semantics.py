"""gpt-oss semantics through ``bentoml serve`` + the ``openai`` SDK: sampling, n, stop, logprobs, tools."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import RemoteServer

# The end-to-end API suite: it runs on every engine selected with --engines.
pytestmark = pytest.mark.engines

MODEL = "gpt-oss-20b"
MSGS = [{"role": "user", "content": "Tell me something."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_seed_reproducible(server: RemoteServer):
    client = server.client()
    kw = dict(model=MODEL, messages=MSGS, max_tokens=12, temperature=1.0, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    c = client.chat.completions.create(**{**kw, "seed": 8}).choices[0].message.content
    assert a == b
    assert a != c


def test_n_choices(server: RemoteServer):
    r = server.client().chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, n=2, seed=1, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content  # seed+i per choice
    assert r.usage.completion_tokens == 12
    streamed = list(
        server.client().chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=6, n=2, seed=1, temperature=1.0, stream=True
        )
    )
    texts = {0: "", 1: ""}
    for chunk in streamed:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {0: r.choices[0].message.content, 1: r.choices[1].message.content}


def test_stop_string_cuts_output(server: RemoteServer):
    client = server.client()
    full = client.completions.create(model=MODEL, prompt="abc", max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    r = client.completions.create(model=MODEL, prompt="abc", max_tokens=30, temperature=0, stop=[stop, "\x00never"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="abc", max_tokens=30, temperature=0, stop=stop, stream=True)
        if c.choices
    )
    assert streamed == cut


def test_chat_stop_string(server: RemoteServer):
    client = server.client()
    full = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=30, temperature=0).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=30, temperature=0, stop=stop)
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(server: RemoteServer):
    r = server.client().chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=3, max_tokens=50)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3  # max_completion_tokens wins


def test_chat_logprobs_shape(server: RemoteServer):
    r = server.client().chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert content, "content tokens carry logprobs"
    for entry in content:
        assert entry.logprob <= 0 and isinstance(entry.bytes, list)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_completion_logprobs_and_echo(server: RemoteServer):
    r = server.client().completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice = r.choices[0]
    assert choice.text.startswith("Hello")
    assert len(choice.logprobs.tokens) == 4
    assert all(len(t) == 2 for t in choice.logprobs.top_logprobs)


def test_reasoning_usage_field(server: RemoteServer):
    r = server.client().chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)
    assert r.usage.completion_tokens_details.reasoning_tokens >= 0


def test_named_tool_choice_round_trip(server: RemoteServer):
    """A forced tool call comes back in the SDK's types, and can be sent back with its result."""
    client = server.client()
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=8,
        temperature=0,
    )
    msg = r.choices[0].message
    assert msg.tool_calls and msg.tool_calls[0].type == "function"
    call = msg.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    assert isinstance(call.function.arguments, str)
    streamed = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    follow = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()], "reasoning_content": "Use the tool."},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
        ],
        tools=[WEATHER_TOOL],
        max_tokens=4,
    )
    assert follow.choices[0].message.role == "assistant"


def test_image_content_rejected(server: RemoteServer):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
        )
    assert "text-only" in info.value.message


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_out_of_range_params(server: RemoteServer, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2, **kwargs)
    assert info.value.param == param

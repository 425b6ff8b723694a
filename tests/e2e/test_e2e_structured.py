"""Structured output through the real server: JSON answers and tool calls that always parse.

The tiny model's weights are noise, so every valid answer is the grammar's doing. Each schema is
sampled 20 times at temperature 1.0 with a reasoning budget: every answer must finish with
``stop`` and validate.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from tests.conftest import ADMIN_KEY, RemoteServer

pytestmark = pytest.mark.engines

MODEL = "gpt-oss-20b"
ASK = [{"role": "user", "content": "Describe a person as JSON."}]
SAMPLES = 20
BUDGET = 12

SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested_enum_array": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "role": {"enum": ["admin", "guest"]},
                    "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 3},
                },
                "required": ["role", "tags"],
                "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
        "additionalProperties": False,
    },
    "numbers_optional": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": -5, "maximum": 5},
            "note": {"type": "string", "maxLength": 6},
        },
        "required": ["score"],
        "additionalProperties": False,
    },
}


# Random weights almost never pick a token that ends a free-length string or closes a bracket (a
# real model does), so the tests lean the noise towards closing tokens; which
# tokens may come next, and so whether the answer parses, is still the grammar's alone.
CLOSERS = {str(t): 12 for t in (1, 18583, 92, 57612, 60, 2601, 6478, 28000, 53940, 8928, 7534)}  # " "} } "}} ] ...


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


async def sample(server: RemoteServer, n: int = SAMPLES, **body) -> list:
    client = server.async_client()
    body.setdefault("max_tokens", 400)
    return await asyncio.gather(*(client.chat.completions.create(model=MODEL, temperature=1.0, **body) for _ in range(n)))


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_answers_always_validate(server: RemoteServer, name: str):
    schema = SCHEMAS[name]
    answers = asyncio.run(
        sample(server, messages=ASK, response_format=json_schema_format(schema), logit_bias=CLOSERS,
               extra_body={"max_reasoning_tokens": BUDGET})
    )
    for r in answers:
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)
        # the reasoning (its own field) took at most the budget, plus its Harmony header and <|end|>
        assert r.usage.completion_tokens_details.reasoning_tokens <= BUDGET + 8


def test_json_object_answers_parse(server: RemoteServer):
    answers = asyncio.run(
        sample(server, messages=ASK, response_format={"type": "json_object"}, max_tokens=1500,
               logit_bias=CLOSERS, extra_body={"max_reasoning_tokens": BUDGET})
    )
    for r in answers:
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_json_schema_answer_validates(server: RemoteServer):
    schema = SCHEMAS["nested_enum_array"]
    stream = server.client().chat.completions.create(
        model=MODEL, messages=ASK, temperature=1.0, max_tokens=400, stream=True,
        response_format=json_schema_format(schema), extra_body={"max_reasoning_tokens": BUDGET},
    )
    content, finish = "", None
    for chunk in stream:
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(content), schema)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": {"type": "integer", "minimum": 1,
                                                                                   "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"],
                       "additionalProperties": False},
    },
}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls_name_a_tool_and_strict_arguments_validate(server: RemoteServer, choice):
    answers = asyncio.run(sample(server, messages=ASK, tools=[WEATHER, CLOCK], tool_choice=choice))
    for r in answers:
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        call = c.message.tool_calls[0].function
        assert call.name in ("get_weather", "get_time") if choice == "required" else call.name == "get_weather"
        tool = WEATHER if call.name == "get_weather" else CLOCK
        jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])


def test_tool_choice_none_never_calls(server: RemoteServer):
    answers = asyncio.run(
        sample(server, n=8, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=60,
               extra_body={"max_reasoning_tokens": 8})
    )
    for r in answers:
        assert not r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason in ("stop", "length")


def test_unsupported_schema_keyword_is_a_400_naming_it(server: RemoteServer):
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    r = httpx.post(
        server.url("/v1/chat/completions"),
        json={"model": MODEL, "messages": ASK, "response_format": json_schema_format(schema)},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert "uniqueItems" in err["message"] and err["param"] == "response_format.json_schema.schema"
    assert err["type"] == "invalid_request_error"


def test_unconstrained_neighbours_are_unchanged(server: RemoteServer):
    """A greedy request gives the same tokens alone and beside constrained requests in the batch."""
    client = server.async_client()

    def plain():
        return client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=24)

    async def go():
        alone = await plain()
        constrained = [
            client.chat.completions.create(
                model=MODEL, messages=ASK, temperature=1.0, max_tokens=200,
                response_format=json_schema_format(SCHEMAS["flat"]), extra_body={"max_reasoning_tokens": BUDGET},
            )
            for _ in range(3)
        ]
        beside = (await asyncio.gather(plain(), *constrained))[0]
        return alone, beside

    alone, beside = asyncio.run(go())
    assert beside.choices[0].message == alone.choices[0].message


def test_completions_response_format_gives_one_json_document(server: RemoteServer):
    schema = SCHEMAS["flat"]
    client = server.async_client()

    async def go():
        return await asyncio.gather(*(
            client.completions.create(
                model=MODEL, prompt="A person:", temperature=1.0, max_tokens=200, logit_bias=CLOSERS,
                extra_body={"response_format": json_schema_format(schema)},
            )
            for _ in range(10)
        ))

    for r in asyncio.run(go()):
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].text), schema)

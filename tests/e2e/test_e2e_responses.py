"""End to end: OpenAI's Responses API on the real ``bentoml serve`` with the tiny model, through the ``openai`` SDK.

The tiny model's weights are random: a turn usually runs to ``max_output_tokens`` (status
``incomplete``) and sometimes stops on its own (``completed``); the tests accept both and check
the shape, which every body and stream event must have by OpenAI's published schema.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import ADMIN_KEY, CHAT_KEY, OTHER_MODEL_KEY, TPM_KEY, RemoteServer
from tests.openai_schema import RESPONSE, RESPONSE_ITEM_LIST, validate_response, validate_stream_event

# The end-to-end API suite: it runs on every engine selected with --engines.
pytestmark = pytest.mark.engines

MODEL = "gpt-oss-20b"
ENDED = ("completed", "incomplete")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _post(server: RemoteServer, body: dict[str, Any], key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(server.url("/v1/responses"), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _stream_events(server: RemoteServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of a streamed response, each checked against OpenAI's schema and its SSE name."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.stream(
        "POST", server.url("/v1/responses"), json={**body, "stream": True}, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = []
    for block in filter(None, raw.split("\n\n")):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        validate_stream_event(event)
        events.append(event)
    assert "[DONE]" not in raw
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_create_and_stream_give_the_same_answer(server: RemoteServer):
    body = {
        "model": MODEL,
        "input": "Say hello.",
        "max_output_tokens": 16,
        "temperature": 0,
        "metadata": {"run": "e2e"},
    }
    r = _post(server, body)
    assert r.status_code == 200, r.text
    full = r.json()
    validate_response(RESPONSE, full)
    assert full["status"] in ENDED and full["metadata"] == {"run": "e2e"}
    assert 0 < full["usage"]["output_tokens"] <= 16
    assert full["usage"]["total_tokens"] == full["usage"]["input_tokens"] + full["usage"]["output_tokens"]
    if full["status"] == "incomplete":
        assert full["incomplete_details"] == {"reason": "max_output_tokens"}
    events = _stream_events(server, body)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    final = events[-1]
    assert final["type"] == f"response.{full['status']}"
    assert final["response"]["usage"] == full["usage"]
    assert [i["type"] for i in final["response"]["output"]] == [i["type"] for i in full["output"]]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == final["response"]["output"]
    deltas = "".join(
        e["delta"] for e in events if e["type"] in ("response.output_text.delta", "response.reasoning_text.delta")
    )
    texts = "".join(p["text"] for item in full["output"] for p in item.get("content", []) if "text" in p)
    assert deltas == texts  # greedy: the same tokens, streamed or not


def test_sdk_stream_retrieve_input_items_delete(server: RemoteServer):
    client = server.client()
    with client.responses.stream(
        model=MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
        ],
        max_output_tokens=12,
    ) as stream:
        # get_final_response() needs response.completed; the random model often ends incomplete.
        final = next(e.response for e in stream if e.type in ("response.completed", "response.incomplete"))
    assert final.status in ENDED and final.instructions == "Be brief."
    got = client.responses.retrieve(final.id)
    assert got.model_dump() == final.model_dump()
    items = client.responses.input_items.list(final.id, order="asc")
    validate_response(RESPONSE_ITEM_LIST, items.model_dump(mode="json", exclude_unset=True))
    assert [i.content[0].text for i in items.data] == ["one", "two"]
    client.responses.delete(final.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final.id)


def test_function_tool_round_trip(server: RemoteServer):
    client = server.client()
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},  # the random model is made to call it
        max_output_tokens=24,
    )
    validate_response(RESPONSE, first.model_dump(mode="json", exclude_unset=True))
    assert first.tool_choice.name == "get_weather"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
        max_output_tokens=12,
    )
    assert second.status in ENDED and second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens  # the history went into the prompt
    (item,) = client.responses.input_items.list(second.id).data
    assert item.type == "function_call_output" and item.output == "sunny, 21 C"
    events = _stream_events(
        server,
        {"model": MODEL, "input": "Weather?", "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 24},
    )
    kinds = {e["type"] for e in events}
    assert "response.output_item.added" in kinds and events[-1]["type"] in ("response.completed", "response.incomplete")
    assert any(i["type"] == "function_call" for i in events[-1]["response"]["output"])


def test_text_format_json_schema_is_enforced(server: RemoteServer):
    """``text.format`` gets chat's structured output: the random model's answer always validates."""
    schema = {
        "type": "object",
        "properties": {"sunny": {"enum": ["yes", "no"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["sunny", "days"],
        "additionalProperties": False,
    }
    text_format = {"type": "json_schema", "name": "forecast", "schema": schema, "strict": True}
    for _ in range(4):
        r = server.client().responses.create(
            model=MODEL, input="Sunny tomorrow?", text={"format": text_format}, max_output_tokens=200, temperature=1.0
        )
        validate_response(RESPONSE, r.model_dump(mode="json", exclude_unset=True, by_alias=True))  # "schema"
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), schema)


def test_keys_cannot_read_each_others_responses(server: RemoteServer):
    mine = server.client().responses.create(model=MODEL, input="secret", max_output_tokens=4)
    other = server.client(OTHER_MODEL_KEY)  # every permission, another key
    for attempt in (
        lambda: other.responses.retrieve(mine.id),
        lambda: other.responses.input_items.list(mine.id),
        lambda: other.responses.delete(mine.id),
        # a key that may use the model (this one has a token budget; a 404 reserves nothing)
        lambda: server.client(TPM_KEY).responses.create(model=MODEL, input="x", previous_response_id=mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert server.client().responses.retrieve(mine.id).id == mine.id  # still there for its owner
    # A key that may not use the model learns that first, whatever the id it names.
    for previous in (mine.id, "resp_unknown"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            other.responses.create(model=MODEL, input="x", previous_response_id=previous)
        assert info.value.param == "model"
    with pytest.raises(openai.PermissionDeniedError):
        server.client(CHAT_KEY).responses.create(model=MODEL, input="x", max_output_tokens=4)


def test_what_cannot_be_honoured_is_a_400(server: RemoteServer):
    for body, param in (
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"background": True}, "background"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "input[0].content[0]",
        ),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
    ):
        r = _post(server, {"model": MODEL, "input": "hi", "max_output_tokens": 4, **body})
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
    r = _post(
        server,
        {
            "model": MODEL,
            "input": "hi",
            "store": False,
            "max_output_tokens": 4,
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"summary": "auto"},
            "prompt_cache_key": "k",
            "client_metadata": {"a": "b"},
        },
    )
    assert r.status_code == 200 and r.json()["store"] is False
    assert (
        httpx.get(
            server.url(f"/v1/responses/{r.json()['id']}"), headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).status_code
        == 404
    )

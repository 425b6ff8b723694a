"""/v1/responses over a fake engine that emits real Harmony tokens, with the official SDK as client.

Every response body and every stream event is checked against OpenAI's published schema. The
store is a dict here (the product's stores are tested in tests/unit/state/).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gptoss.api.app import create_app
from gptoss.api.common.serving import Backend
from gptoss.auth import Principal
from gptoss.settings import Settings
from gptoss.state import ResponseStoreError, StoredResponse
from tests.openai_schema import RESPONSE, RESPONSE_ITEM_LIST, validate_response, validate_stream_event
from tests.unit.api.test_routes import ENC, REASON_THEN_ANSWER, TOOL_CALL, FakeEngine

MODEL = "gpt-oss-20b"
WEATHER = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


class DictStore:
    """The ResponseStore protocol over a dict (tests only)."""

    def __init__(self) -> None:
        self.records: dict[str, StoredResponse] = {}
        self.fail = False

    async def put(self, record: StoredResponse) -> None:
        if self.fail:
            raise ResponseStoreError("disk full")
        self.records[record.id] = record

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        record = self.records.get(response_id)
        return record if record is not None and record.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        del self.records[response_id]
        return True

    async def close(self) -> None:
        pass


class Owner:
    """ASGI middleware standing in for auth: the ``x-owner`` header names the caller's key."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-owner")
            if name:
                scope.setdefault("state", {})["principal"] = Principal(name=name.decode())
        await self.app(scope, receive, send)


class Setup:
    def __init__(self, script: str, **settings: Any) -> None:
        self.engine = FakeEngine(script)
        self.store = DictStore()
        self.app = Owner(create_app(Backend(self.engine, ENC, Settings(**settings), store=self.store)))

    def http(self, owner: str | None = None) -> httpx.AsyncClient:
        headers = {"x-owner": owner} if owner else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test", headers=headers)

    def sdk(self, owner: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=self.http(owner), max_retries=0
        )

    def prompt(self, i: int = -1) -> str:
        return ENC.decode(self.engine.requests[i].prompt_ids)


async def raw_events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events of a streamed response, each checked: framing, schema, sequence."""
    r = await http.post("/v1/responses", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in r.text.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data[len("data: ") :])
        assert event["type"] == name[len("event: ") :]
        validate_stream_event(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "[DONE]" not in r.text
    return events


async def test_reasoning_and_answer(tmp_path):
    s = Setup(REASON_THEN_ANSWER)
    async with s.http() as http:
        r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "metadata": {"k": "v"}})
    body = r.json()
    validate_response(RESPONSE, body)
    assert body["status"] == "completed" and body["id"].startswith("resp_") and body["metadata"] == {"k": "v"}
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "The user greets; answer kindly."}]
    assert "encrypted_content" not in reasoning
    assert message["type"] == "message" and message["id"].startswith("msg_") and message["status"] == "completed"
    assert message["content"][0]["text"] == "Hello there! 👋"
    usage = body["usage"]
    assert usage["output_tokens"] == len(ENC.encode(REASON_THEN_ANSWER, allowed_special="all"))
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    stored = s.store.records[body["id"]]
    assert stored.owner == "" and stored.response == body and stored.created_at == body["created_at"]
    assert [i["type"] for i in stored.history] == ["message", "reasoning", "message"]


async def test_sdk_reads_it(tmp_path):
    s = Setup(REASON_THEN_ANSWER, reasoning_field="reasoning")  # either reasoning field setting
    r = await s.sdk().responses.create(model=MODEL, input="hi", instructions="Be kind.")
    assert r.output_text == "Hello there! 👋" and r.instructions == "Be kind."
    assert r.output[0].content[0].text == "The user greets; answer kindly."
    assert "Be kind." in s.prompt()


async def test_stream_events_in_openai_order_and_same_answer():
    s = Setup(REASON_THEN_ANSWER)
    async with s.http() as http:
        events = await raw_events(http, {"model": MODEL, "input": "hi"})
    kinds = [e["type"] for e in events]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == final["output"][1]["content"][0]["text"] == "Hello there! 👋"
    assert s.store.records[final["id"]].response == final  # stored before the last event went out
    async with s.sdk().responses.stream(model=MODEL, input="hi") as stream:
        async for _ in stream:
            pass
        assert (await stream.get_final_response()).output_text == "Hello there! 👋"


async def test_function_call_round_trip_with_previous_response_id():
    s = Setup(TOOL_CALL)
    client = s.sdk()
    # The fake engine answers with a whole scripted turn, so tool_choice stays auto (no forced prefill).
    first = await client.responses.create(
        model=MODEL, input="Weather in Paris?", tools=WEATHER, parallel_tool_calls=False
    )
    validate_response(RESPONSE, first.model_dump(mode="json", exclude_unset=True))
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"} and call.id.startswith("fc_")
    assert first.tool_choice == "auto" and first.parallel_tool_calls is False
    second = await client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=WEATHER,
    )
    prompt = s.prompt()
    assert "Weather in Paris?" in prompt and "Need the weather." in prompt  # the history, reasoning kept before a call
    assert "to=functions.get_weather" in prompt and "sunny, 21 C" in prompt
    assert second.previous_response_id == first.id
    history = s.store.records[second.id].history
    assert [i["type"] for i in history][:4] == ["message", "reasoning", "function_call", "function_call_output"]
    async with s.http() as http:
        events = await raw_events(http, {"model": MODEL, "input": "again", "tools": WEATHER})
    args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == args and done["name"] == "get_weather"


async def test_retrieve_list_delete_and_owners():
    s = Setup(REASON_THEN_ANSWER)
    alice, bob = s.sdk("alice"), s.sdk("bob")
    created = await alice.responses.create(
        model=MODEL, input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    )
    got = await alice.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()
    async with s.http("alice") as http:
        listed = (await http.get(f"/v1/responses/{created.id}/input_items")).json()
        validate_response(RESPONSE_ITEM_LIST, listed)
        assert [i["content"][0]["text"] for i in listed["data"]] == ["two", "one"]  # newest first, as OpenAI
        page = (await http.get(f"/v1/responses/{created.id}/input_items?order=asc&limit=1")).json()
        assert [i["content"][0]["text"] for i in page["data"]] == ["one"] and page["has_more"] is True
        rest = (await http.get(f"/v1/responses/{created.id}/input_items?order=asc&after={page['last_id']}")).json()
        assert [i["content"][0]["text"] for i in rest["data"]] == ["two"] and rest["has_more"] is False
        bad = await http.get(f"/v1/responses/{created.id}/input_items?limit=0")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    items = await alice.responses.input_items.list(created.id)
    assert len(items.data) == 2
    for attempt in (
        bob.responses.retrieve(created.id),
        bob.responses.input_items.list(created.id),
        bob.responses.delete(created.id),
        bob.responses.create(model=MODEL, input="x", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            await attempt
        assert info.value.body["message"].endswith(f"with id '{created.id}' not found.")
    assert info.value.body["param"] == "previous_response_id"
    await alice.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await alice.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await alice.responses.delete(created.id)


async def test_store_false_keeps_nothing_and_bad_input_is_a_400():
    s = Setup(REASON_THEN_ANSWER)
    client = s.sdk()
    r = await client.responses.create(model=MODEL, input="hi", store=False)
    assert r.store is False and not s.store.records
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert info.value.body["param"] == "tools[0]"
    with pytest.raises(openai.BadRequestError) as info:  # the chat path's error, in the Responses names
        await client.responses.create(
            model=MODEL, input=[{"type": "function_call_output", "call_id": "call_x", "output": "o"}]
        )
    assert info.value.body["param"] == "input[0]"
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.create(model="other", input="hi")
    assert info.value.body["param"] == "model"
    assert not s.engine.requests[1:]  # none of the refused requests reached the engine


async def test_output_budget_ends_incomplete():
    s = Setup(REASON_THEN_ANSWER)
    async with s.http() as http:
        r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 6})
        body = r.json()
        validate_response(RESPONSE, body)
        assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
        assert body["usage"]["output_tokens"] == 6 and body["output"][-1]["status"] == "incomplete"
        assert body["max_output_tokens"] == 6
        events = await raw_events(http, {"model": MODEL, "input": "hi", "max_output_tokens": 6})
    assert events[-1]["type"] == "response.incomplete"


async def test_generation_failure():
    s = Setup(REASON_THEN_ANSWER)
    s.engine.fail_after = 3
    async with s.http() as http:
        events = await raw_events(http, {"model": MODEL, "input": "hi"})
        assert events[-1]["type"] == "response.failed"
        failed = events[-1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert s.store.records[failed["id"]].response["status"] == "failed"
        r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"


async def test_store_failure_fails_the_response():
    s = Setup(REASON_THEN_ANSWER)
    s.store.fail = True
    async with s.http() as http:
        r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        events = await raw_events(http, {"model": MODEL, "input": "hi"})
        assert events[-1]["type"] == "response.failed" and "disk full" in events[-1]["response"]["error"]["message"]
        r = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "store": False})
        assert r.status_code == 200


async def test_encrypted_reasoning_when_asked():
    s = Setup(TOOL_CALL)
    client = s.sdk()
    first = await client.responses.create(
        model=MODEL, input="Weather?", tools=WEATHER, store=False, include=["reasoning.encrypted_content"]
    )
    reasoning, call = first.output
    assert reasoning.encrypted_content
    await client.responses.create(
        model=MODEL,
        store=False,
        tools=WEATHER,
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
        ],
    )
    assert "Need the weather." in s.prompt() and "rain" in s.prompt()

"""The Responses request model and its translation into the chat path (no server, no engine)."""

from __future__ import annotations

import pytest

from gptoss.api.chat.protocol import ChatCompletionRequest
from gptoss.api.responses.items import (
    chat_body,
    decode_reasoning,
    encode_reasoning,
    restate,
    stored_input,
)
from gptoss.api.responses.protocol import ResponseCreateRequest
from gptoss.errors import APIError
from tests.unit.api.protocol_helpers import api_error

MODEL = "gpt-oss-20b"


def req(**fields) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": MODEL, "input": "hi", **fields})


def body_of(request: ResponseCreateRequest, history=()) -> dict:
    body, _ = chat_body(request, list(history), stored_input(request))
    ChatCompletionRequest.model_validate(body)  # the chat path takes it as is
    return body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tools": [{"type": "namespace", "name": "x", "tools": []}]}, "tools[0]"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"effort": "minimal"}}, "reasoning.effort"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(fields, param):
    err = api_error(ResponseCreateRequest, {"model": MODEL, "input": "hi", **fields})
    assert err.status == 400 and err.param == param, err.message


def test_harmless_client_fields_are_accepted():
    """What Codex CLI and the Agents SDK send (see docs): accepted, none of it changes the answer."""
    r = req(
        include=["reasoning.encrypted_content"],
        reasoning={"summary": "auto"},
        store=False,
        prompt_cache_key="session-1",
        client_metadata={"turn": "1"},
        parallel_tool_calls=True,
        safety_identifier="u1",
        service_tier="auto",
        truncation="disabled",
        stream_options={"include_obfuscation": False},
        background=False,
    )
    assert not r.stores and r.wants_encrypted_reasoning
    assert req(include=[]).stores


def test_request_fields_map_to_chat():
    r = req(
        instructions="Be brief.",
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "description": "d",
                "parameters": {"type": "object"},
                "strict": True,
            }
        ],
        tool_choice={"type": "function", "name": "get_weather"},
        reasoning={"effort": "low"},
        max_output_tokens=32,
        temperature=0.5,
        top_p=0.9,
        parallel_tool_calls=False,
        user="u",
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    )
    body, where = chat_body(r, [], stored_input(r))
    assert body["messages"] == [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert where == ["instructions", "input"]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["reasoning_effort"] == "low" and body["max_completion_tokens"] == 32
    assert (body["temperature"], body["top_p"], body["parallel_tool_calls"], body["user"]) == (0.5, 0.9, False, "u")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert body["include_reasoning"] is True


def test_items_become_one_assistant_turn_per_answer():
    """reasoning + message + calls of one turn -> one assistant message; outputs -> tool messages."""
    r = req(
        input=[
            {"content": "Weather in Paris?", "role": "user"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "encrypted_content": None,
                "content": [{"type": "reasoning_text", "text": "Need the weather."}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
                "status": "completed",
            },
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": {"tz": "CET"}},
            {"type": "function_call_output", "id": "fco_x", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Answer now."}]},
            {"role": "assistant", "content": "Sunny at noon."},
            {"role": "developer", "content": [{"type": "input_text", "text": "Use metric."}]},
        ]
    )
    body = body_of(r)
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "reasoning_content": "Need the weather.",
            "content": [{"type": "text", "text": "Checking."}],
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {
            "role": "assistant",
            "reasoning_content": "Answer now.",
            "content": [{"type": "text", "text": "Sunny at noon."}],
        },
        {"role": "developer", "content": "Use metric."},
    ]


def test_stored_input_gives_ids_and_part_lists():
    r = req(input=[{"role": "user", "content": "a"}, {"type": "function_call_output", "call_id": "c", "output": "o"}])
    first, second = stored_input(r)
    assert first["id"].startswith("msg_") and first["content"] == [{"type": "input_text", "text": "a"}]
    assert second["id"].startswith("fco_") and second["status"] == "completed"
    kept = stored_input(req(input=[{"type": "message", "id": "msg_client", "role": "user", "content": "x"}]))
    assert kept[0]["id"] == "msg_client"  # ids the client made are kept, never looked up
    (string,) = stored_input(req(input="plain"))
    assert string["role"] == "user" and string["type"] == "message"


def test_history_comes_before_input_and_errors_name_where():
    history = stored_input(req(input="earlier"))
    r = req(input=[{"type": "function_call_output", "call_id": "nope", "output": "x"}])
    body, where = chat_body(r, history, stored_input(r))
    assert [m["role"] for m in body["messages"]] == ["user", "tool"]
    assert where == ["previous_response_id", "input[0]"]
    chat_err = APIError(400, "messages[1].tool_call_id: unknown", param="messages[1].tool_call_id")
    err = restate(chat_err, where)
    assert err.param == "input[0]" and err.message == "input[0]: unknown"
    assert restate(APIError(400, "response_format: no", param="response_format"), where).param == "text.format"
    assert restate(APIError(400, "x", param="max_completion_tokens"), where).param == "max_output_tokens"
    assert restate(APIError(400, "x", param="tools[2].function.parameters"), where).param == "tools[2].parameters"


def test_encrypted_reasoning_round_trips_and_foreign_blobs_are_refused():
    blob = encode_reasoning("thinking… 🤔")
    assert decode_reasoning(blob, "p") == "thinking… 🤔"
    r = req(
        input=[
            {"type": "reasoning", "summary": [], "encrypted_content": blob},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ]
    )
    assert body_of(r)["messages"][0]["reasoning_content"] == "thinking… 🤔"
    with pytest.raises(APIError) as info:
        stored_input(req(input=[{"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-openai-blob"}]))
    assert info.value.param == "input[0].encrypted_content"

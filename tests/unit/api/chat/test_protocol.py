"""chat/protocol.py: chat request validation -> OpenAI 400s, sampling mapping, and response shapes the SDK parses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from openai.types import CompletionUsage as SDKUsage
from openai.types.chat import ChatCompletion as SDKChatCompletion
from openai.types.chat import ChatCompletionChunk as SDKChatCompletionChunk

from gptoss.api.chat.protocol import (
    MAX_MESSAGES,
    MAX_TOOLS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    DeveloperMessage,
    FileContentPart,
    FunctionCall,
    ImageContentPart,
    InputAudioContentPart,
    NamedToolChoice,
    RefusalContentPart,
    SystemMessage,
    TextContentPart,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolCallFunctionDelta,
    ToolMessage,
    TopLogprob,
    UserMessage,
)
from gptoss.api.common.protocol import (
    MAX_LOGIT_BIAS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_LIMIT,
    MIN_LOGPROB,
    to_sampling_params,
)
from gptoss.engine.types import SamplingParams
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE
from tests import openai_schema as S
from tests.openai_schema import validate_response
from tests.unit.api.protocol_helpers import (
    USER,
    api_error,
    chat,
    make_usage,
    sdk_client,
    sse_json,
    sse_response,
    wire,
)

# ------------------------------------------------------------------------------------------------
# Chat requests
# ------------------------------------------------------------------------------------------------


def test_minimal_chat_request_defaults() -> None:
    req = ChatCompletionRequest.model_validate(chat())
    assert isinstance(req.messages[0], UserMessage)
    assert req.n == 1
    assert req.include_reasoning is True
    assert req.effective_reasoning_effort() == "medium"
    assert req.requested_max_tokens() is None
    assert req.stop_sequences() == []
    assert req.stream_options is None


def test_unknown_fields_are_ignored() -> None:
    body = chat(metadata={"a": "b"}, store=True, service_tier="flex", frobnicate=1)
    body["messages"] = [{**USER, "extra_field": 1}]
    req = ChatCompletionRequest.model_validate(body)
    dumped = req.model_dump()
    assert "frobnicate" not in dumped and "store" not in dumped
    assert "extra_field" not in dumped["messages"][0]


def test_every_role_parses_to_its_model() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "thinking",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "done", "reasoning": "other-style reasoning"},
        ]
    )
    req = ChatCompletionRequest.model_validate(body)
    kinds = [type(m) for m in req.messages]
    assert kinds == [
        SystemMessage,
        DeveloperMessage,
        UserMessage,
        AssistantMessage,
        ToolMessage,
        AssistantMessage,
    ]
    assistant = req.messages[3]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls is not None and assistant.tool_calls[0].function.name == "f"
    assert (assistant.reasoning_content, assistant.reasoning) == ("thinking", None)
    last = req.messages[5]
    assert isinstance(last, AssistantMessage)
    assert (last.reasoning_content, last.reasoning) == (None, "other-style reasoning")
    tool = req.messages[4]
    assert isinstance(tool, ToolMessage) and tool.tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("content", "texts"),
    [
        ("plain", "plain"),
        ([{"type": "text", "text": "a"}], ["a"]),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], ["a", "b"]),
    ],
    ids=["string", "one part", "two parts"],
)
def test_content_as_string_or_text_parts(content: Any, texts: str | list[str]) -> None:
    req = ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": content}]))
    message = req.messages[0]
    assert isinstance(message, UserMessage)
    if isinstance(texts, str):
        assert message.content == texts
    else:
        assert isinstance(message.content, list)
        assert [(type(p), getattr(p, "text", None)) for p in message.content] == [(TextContentPart, t) for t in texts]


@pytest.mark.parametrize(
    ("part", "model"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}, ImageContentPart),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, InputAudioContentPart),
        ({"type": "file", "file": {"file_id": "file-1"}}, FileContentPart),
    ],
)
def test_non_text_parts_parse_for_the_renderer_to_refuse(part: dict[str, Any], model: type) -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, part]}])
    req = ChatCompletionRequest.model_validate(body)
    message = req.messages[0]
    assert isinstance(message, UserMessage) and isinstance(message.content, list)
    assert isinstance(message.content[1], model)


def test_assistant_refusal_part_and_dict_arguments() -> None:
    body = chat(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": "no"}],
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
        ]
    )
    message = ChatCompletionRequest.model_validate(body).messages[1]
    assert isinstance(message, AssistantMessage)
    assert isinstance(message.content, list) and isinstance(message.content[0], RefusalContentPart)
    assert message.content[0].refusal == "no"
    assert message.tool_calls is not None and json.loads(message.tool_calls[0].function.arguments) == {"x": 1}


def test_reasoning_effort_precedence() -> None:
    def effort(**fields: Any) -> str:
        return ChatCompletionRequest.model_validate(chat(**fields)).effective_reasoning_effort()

    assert effort(reasoning={"effort": "high"}) == "high"
    assert effort(reasoning={"effort": "high"}, reasoning_effort="low") == "low"
    assert effort(reasoning={}) == "medium"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 7}, 7),
        ({"max_tokens": 10, "max_completion_tokens": 7}, 7),
    ],
)
def test_requested_max_tokens(fields: dict[str, Any], expected: int | None) -> None:
    assert ChatCompletionRequest.model_validate(chat(**fields)).requested_max_tokens() == expected


def test_valid_edge_values_are_accepted() -> None:
    req = ChatCompletionRequest.model_validate(
        chat(
            temperature=0,
            top_p=1,
            frequency_penalty=-2,
            presence_penalty=2,
            n=8,
            stop=["a", "b", "c", "d"],
            logprobs=True,
            top_logprobs=20,
            logit_bias={"50256": -100, "7": 100},
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format={"type": "text"},
            stream=True,
            stream_options={"include_usage": True},
            top_k=0,
            min_p=1,
            repetition_penalty=2,
            seed=-1,
        )
    )
    assert req.logit_bias == {"50256": -100.0, "7": 100.0}
    assert req.stop_sequences() == ["a", "b", "c", "d"]
    assert isinstance(req.tool_choice, NamedToolChoice)
    assert req.stream_options is not None and req.stream_options.include_usage is True


def test_top_logprobs_zero_without_logprobs_is_tolerated() -> None:
    req = ChatCompletionRequest.model_validate(chat(top_logprobs=0))
    assert req.top_logprobs == 0


def test_fields_we_can_honour_or_ignore_harmlessly_are_accepted() -> None:
    req = ChatCompletionRequest.model_validate(
        chat(
            modalities=["text"],
            verbosity="medium",
            response_format={"type": "text"},
            functions=None,
            function_call=None,
            audio=None,
            web_search_options=None,
            prediction=None,
            n=None,
            # Harmless: they do not change the completion.
            user="u",
            metadata={"k": "v"},
            store=True,
            service_tier="auto",
            safety_identifier="s",
            prompt_cache_key="p",
            prompt_cache_retention="24h",
            stream_options={"include_usage": True, "include_obfuscation": True},
            messages=[USER, {"role": "assistant", "content": "hi", "function_call": None, "audio": None}],
        )
    )
    assert req.n == 1 and req.stream_options is not None and req.stream_options.include_usage is True
    assert "functions" not in req.model_dump() and "verbosity" not in req.model_dump()


def test_bounds_accept_their_limits() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS)]
    req = ChatCompletionRequest.model_validate(
        chat(
            messages=[USER] * MAX_MESSAGES,
            max_tokens=MAX_TOKENS_LIMIT,
            max_completion_tokens=MAX_TOKENS_LIMIT,
            top_k=HARMONY_VOCAB_SIZE,
            logit_bias={str(HARMONY_VOCAB_SIZE - 1 - i): 1 for i in range(MAX_LOGIT_BIAS)},
            stop=["x" * MAX_STOP_LENGTH] * MAX_STOP_SEQUENCES,
            tools=tools,
            seed=2**64 - 1,
        )
    )
    assert len(req.messages) == 2048 and len(req.tools or ()) == 128 and len(req.logit_bias or {}) == 1024


@pytest.mark.parametrize("choice", ["none", "auto"])
def test_tool_choice_modes_without_tools(choice: str) -> None:
    assert ChatCompletionRequest.model_validate(chat(tool_choice=choice)).tool_choice == choice


TOOLS = [{"type": "function", "function": {"name": "f"}}]


INVALID_CHAT: list[tuple[dict[str, Any], str | None, str]] = [
    # (body overrides, expected param, fragment of the message)
    ({"temperature": 2.5}, "temperature", "temperature: Input should be less than or equal to 2"),
    ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ({"temperature": "hot"}, "temperature", "valid number"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"frequency_penalty": 2.1}, "frequency_penalty", "less than or equal to 2"),
    ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 9}, "n", "less than or equal to 8"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    ({"top_logprobs": 3}, "top_logprobs", "requires logprobs"),
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs", "requires logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "integer token ids"),
    ({"logit_bias": {"-1": 1}}, "logit_bias", "integer token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
    ({"logit_bias": {"5": "x"}}, "logit_bias", "must be a number"),
    ({"logit_bias": [1, 2]}, "logit_bias", "object mapping"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "'low', 'medium' or 'high'"),
    ({"reasoning": {"effort": "max"}}, "reasoning.effort", "'low', 'medium' or 'high'"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": ""}, "stop", "non-empty"),
    ({"stop": ["a", ""]}, "stop", "non-empty"),
    ({"stop": 5}, "stop", "string or a list of strings"),
    ({"stream": "maybe"}, "stream", "valid boolean"),
    ({"stream_options": {"include_usage": "x"}}, "stream_options.include_usage", "valid boolean"),
    ({"seed": 1.5}, "seed", "valid integer"),
    ({"top_k": -1}, "top_k", "greater than or equal to 0"),
    ({"min_p": 1.5}, "min_p", "less than or equal to 1"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
    ({"repetition_penalty": 2.5}, "repetition_penalty", "less than or equal to 2"),
    ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto' or 'required'"),
    ({"tool_choice": 3}, "tool_choice", "'none', 'auto', 'required'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice", "not in tools"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name", "Field required"),
    ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, "tools[0].type", "'function'"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "pattern"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
        "tools[0].function.parameters",
        "dictionary",
    ),
    ({"tools": TOOLS * 2}, "tools", "unique"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.json_schema.name", "required"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs a json_schema object"),
    ({"response_format": {"type": "json_object", "json_schema": {"name": "x"}}}, "response_format", "only allowed"),
    ({"max_reasoning_tokens": 0}, "max_reasoning_tokens", "greater than or equal to 1"),
    # OpenAI features we cannot honour: refused, not ignored.
    ({"response_format": {"type": "xml"}}, "response_format.type", "'text'"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "declare them in tools"),
    ({"functions": []}, "functions", "declare them in tools"),
    ({"function_call": "auto"}, "function_call", "use tool_choice"),
    ({"function_call": {"name": "f"}}, "function_call", "use tool_choice"),
    ({"modalities": ["text", "audio"]}, "modalities", "only the 'text' modality"),
    ({"modalities": "text"}, "modalities", "only the 'text' modality"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "text only"),
    ({"web_search_options": {}}, "web_search_options", "no web search"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction", "not supported"),
    ({"verbosity": "low"}, "verbosity", "use 'medium'"),
    (
        {"messages": [USER, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]},
        "messages[1].function_call",
        "send tool_calls",
    ),
    ({"messages": [USER, {"role": "assistant", "audio": {"id": "audio_1"}}]}, "messages[1].audio", "text only"),
    # Bounds: every count is capped at the edge.
    ({"max_tokens": 2**31}, "max_tokens", "less than or equal to 2147483647"),
    ({"max_completion_tokens": 10**30}, "max_completion_tokens", "less than or equal to 2147483647"),
    ({"top_k": HARMONY_VOCAB_SIZE + 1}, "top_k", "less than or equal to 201088"),
    ({"logit_bias": {"99999999999999999999": 1}}, "logit_bias", "below the vocabulary size 201088"),
    ({"logit_bias": {str(HARMONY_VOCAB_SIZE): 1}}, "logit_bias", "below the vocabulary size"),
    ({"logit_bias": {"9" * 5000: 1}}, "logit_bias", "integer token ids"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias", "at most 1024 entries"),
    ({"messages": [USER] * 2049}, "messages", "at most 2048 items"),
    ({"stop": "x" * 257}, "stop", "at most 256 characters"),
    ({"stop": ["a", "x" * 257]}, "stop", "at most 256 characters"),
    (
        {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
        "tools",
        "at most 128 items",
    ),
    ({"seed": 2**64}, "seed", "less than or equal to 18446744073709551615"),
    ({"seed": -(2**63) - 1}, "seed", "greater than or equal to -9223372036854775808"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": "hi"}, "messages", "valid list"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]", "role 'system', 'developer'"),
    ({"messages": [{"content": "x"}]}, "messages[0]", "role 'system'"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "Field required"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a list of content parts"),
    (
        {"messages": [USER, {"role": "user", "content": [{"type": "text"}]}]},
        "messages[1].content[0].text",
        "Field required",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": 1}]}]},
        "messages[0].content[0]",
        "'image_url'",
    ),
    (
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
        "messages[0].content[0]",
        "type 'text', got type 'image_url'",
    ),
    (
        {"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"text": "x"}]}]},
        "messages[0].content[0]",
        "type 'text', got type None",
    ),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "Field required"),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
        "messages[0].tool_calls[0].function.arguments",
        "Field required",
    ),
    ({"model": None}, "model", "valid string"),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), INVALID_CHAT, ids=[f"{c[1]}:{c[2]}" for c in INVALID_CHAT])
def test_invalid_chat_request_is_a_400_naming_the_param(fields: dict[str, Any], param: str, fragment: str) -> None:
    err = api_error(ChatCompletionRequest, chat(**fields))
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.param == param
    assert fragment in err.message
    assert err.message.startswith(param)


def test_missing_required_fields() -> None:
    err = api_error(ChatCompletionRequest, {"model": "m"})
    assert (err.param, err.code) == ("messages", None)
    assert err.message == "messages: Field required"
    err = api_error(ChatCompletionRequest, {"messages": [USER]})
    assert err.param == "model"


def test_non_finite_numbers_are_rejected() -> None:
    err = api_error(ChatCompletionRequest, chat(temperature=math.nan))
    assert err.param == "temperature" and "finite" in err.message


# ------------------------------------------------------------------------------------------------
# Sampling parameters
# ------------------------------------------------------------------------------------------------


def test_chat_to_sampling_params_defaults() -> None:
    req = ChatCompletionRequest.model_validate(chat())
    assert to_sampling_params(req, max_tokens=100) == SamplingParams(max_tokens=100)


def test_chat_to_sampling_params_maps_every_field() -> None:
    req = ChatCompletionRequest.model_validate(
        chat(
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            seed=10,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            repetition_penalty=1.1,
            logit_bias={"17": 5, "42": -100},
            logprobs=True,
            top_logprobs=3,
        )
    )
    params = to_sampling_params(req, max_tokens=64, stop_token_ids=(200002, 200012), seed_offset=2)
    assert params == SamplingParams(
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=12,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        logit_bias={17: 5.0, 42: -100.0},
        logprobs=3,
        stop_token_ids=(200002, 200012),
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({}, None), ({"logprobs": False}, None), ({"logprobs": True}, 0), ({"logprobs": True, "top_logprobs": 5}, 5)],
)
def test_chat_logprobs_mapping(fields: dict[str, Any], expected: int | None) -> None:
    req = ChatCompletionRequest.model_validate(chat(**fields))
    assert to_sampling_params(req, max_tokens=1).logprobs == expected


def test_seed_offsets_give_each_choice_its_own_seed() -> None:
    req = ChatCompletionRequest.model_validate(chat(seed=100, n=3))
    assert [to_sampling_params(req, max_tokens=1, seed_offset=i).seed for i in range(req.n)] == [100, 101, 102]
    unseeded = ChatCompletionRequest.model_validate(chat(n=3))
    assert to_sampling_params(unseeded, max_tokens=1, seed_offset=2).seed is None


def test_temperature_zero_is_kept_not_defaulted() -> None:
    req = ChatCompletionRequest.model_validate(chat(temperature=0))
    assert to_sampling_params(req, max_tokens=1).temperature == 0.0


# ------------------------------------------------------------------------------------------------
# Responses: the SDK parses them, and the JSON has OpenAI's exact shape
# ------------------------------------------------------------------------------------------------


def top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def full_chat_completion() -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        system_fingerprint="fp_1",
        choices=[
            ChatChoice(
                index=0,
                message=ChatMessage(content="Hi!", reasoning_content="The user greets me."),
                logprobs=ChoiceLogprobs(
                    content=[
                        TokenLogprob(
                            token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=[top("Hi", -0.1), top("Hey", -2.5)]
                        )
                    ]
                ),
                finish_reason="stop",
            ),
            ChatChoice(
                index=1,
                message=ChatMessage(
                    content=None,
                    reasoning="Need the weather.",
                    tool_calls=[
                        ToolCall(
                            id="call_1", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
                        )
                    ],
                ),
                finish_reason="tool_calls",
            ),
        ],
        usage=make_usage(10, 20, reasoning_tokens=5, cached_tokens=0),
    )


def test_chat_completion_sdk_round_trip() -> None:
    ours = full_chat_completion()
    sdk = SDKChatCompletion.model_validate(ours.model_dump())
    assert sdk.choices[0].message.content == "Hi!"
    assert sdk.choices[0].logprobs is not None and sdk.choices[0].logprobs.content is not None
    assert sdk.choices[0].logprobs.content[0].top_logprobs[1].token == "Hey"
    call = sdk.choices[1].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert sdk.usage is not None and sdk.usage.total_tokens == 30
    assert sdk.usage.completion_tokens_details is not None and sdk.usage.completion_tokens_details.reasoning_tokens == 5
    # The reasoning extension survives the SDK as an extra attribute.
    assert sdk.choices[0].message.model_extra == {"reasoning_content": "The user greets me."}
    # And JSON parses the same as the dict form.
    assert SDKChatCompletion.model_validate_json(ours.model_dump_json()) == sdk


def test_chat_message_json_shape() -> None:
    data = json.loads(full_chat_completion().model_dump_json())
    first, second = data["choices"]
    assert first["message"] == {
        "role": "assistant",
        "content": "Hi!",
        "refusal": None,
        "reasoning_content": "The user greets me.",
    }
    assert "reasoning_content" not in second["message"] and second["message"]["reasoning"] == "Need the weather."
    assert second["logprobs"] is None
    assert data["object"] == "chat.completion"
    assert list(data) == ["id", "choices", "created", "model", "object", "system_fingerprint", "usage"]


def chunk(delta: ChoiceDelta, finish_reason: Any = None, **kwargs: Any) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="chatcmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        **kwargs,
    )


def test_chunk_sse_json_is_exact() -> None:
    first = sse_json(chunk(ChoiceDelta(role="assistant", content="")).to_sse())
    assert first == {
        "id": "chatcmpl-1",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
        "created": 1700000000,
        "model": "gpt-oss-20b",
        "object": "chat.completion.chunk",
        "usage": None,
    }
    middle = sse_json(chunk(ChoiceDelta(content="Hel")).to_sse())
    assert middle["choices"][0]["delta"] == {"content": "Hel"}
    assert middle["choices"][0]["finish_reason"] is None and middle["usage"] is None
    reasoning = sse_json(chunk(ChoiceDelta(reasoning_content="hmm", reasoning="hmm")).to_sse())
    assert reasoning["choices"][0]["delta"] == {"reasoning_content": "hmm", "reasoning": "hmm"}
    last = sse_json(chunk(ChoiceDelta(), finish_reason="stop").to_sse())
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_tool_call_delta_json() -> None:
    opening = ToolCallDelta(
        index=0, id="call_1", type="function", function=ToolCallFunctionDelta(name="f", arguments="")
    )
    more = ToolCallDelta(index=0, function=ToolCallFunctionDelta(arguments='{"a":'))
    assert sse_json(chunk(ChoiceDelta(tool_calls=[opening])).to_sse())["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    assert sse_json(chunk(ChoiceDelta(tool_calls=[more])).to_sse())["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]
    }


def test_usage_chunk_and_sdk_parse_of_chunks() -> None:
    usage_chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=make_usage(3, 4))
    data = sse_json(usage_chunk.to_sse())
    assert data["choices"] == [] and data["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }
    expected = SDKUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert SDKChatCompletionChunk.model_validate(data).usage == expected
    first = chunk(ChoiceDelta(role="assistant", content="x"))
    parsed = SDKChatCompletionChunk.model_validate(sse_json(first.to_sse()))
    assert parsed.choices[0].delta.role == "assistant" and parsed.choices[0].finish_reason is None
    assert parsed.usage is None


def test_non_finite_logprobs_are_clamped() -> None:
    lp = TokenLogprob(token="x", logprob=float("-inf"), top_logprobs=[TopLogprob(token="x", logprob=float("nan"))])
    assert (lp.logprob, lp.top_logprobs[0].logprob) == (MIN_LOGPROB, MIN_LOGPROB)
    assert json.loads(lp.model_dump_json())["logprob"] == -9999.0


# ------------------------------------------------------------------------------------------------
# Responses against OpenAI's published OpenAPI spec (tests/openai_schema.py)
# ------------------------------------------------------------------------------------------------


def tool_call(i: int = 1) -> ToolCall:
    return ToolCall(id=f"call_{i}", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}'))


def minimal_chat_completion(**message: Any) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-2",
        model="gpt-oss-20b",
        choices=[ChatChoice(index=0, message=ChatMessage(**message), finish_reason="stop")],
    )


CHAT_COMPLETIONS = {
    "full": full_chat_completion,
    "bare": lambda: minimal_chat_completion(content="x"),
    "null content, no usage": lambda: minimal_chat_completion(),
    "two tool calls": lambda: minimal_chat_completion(tool_calls=[tool_call(1), tool_call(2)]),
    "both reasoning fields": lambda: minimal_chat_completion(content="a", reasoning_content="r", reasoning="r"),
    "usage without details": lambda: minimal_chat_completion(content="a").model_copy(
        update={"usage": make_usage(1, 2)}
    ),
    "empty logprobs": lambda: ChatCompletion(
        id="c",
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=ChatMessage(content=""),
                logprobs=ChoiceLogprobs(content=[]),
                finish_reason="length",
            )
        ],
        usage=make_usage(1, 0, reasoning_tokens=0),
    ),
}


@pytest.mark.parametrize("build", CHAT_COMPLETIONS.values(), ids=CHAT_COMPLETIONS.keys())
def test_chat_completions_match_openai_schema(build: Any) -> None:
    validate_response(S.CHAT_COMPLETION, wire(build()))


def logprob_entry() -> TokenLogprob:
    return TokenLogprob(token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=[top("Hi", -0.1), top("Yo", -3.0)])


CHAT_CHUNKS = {
    "role": lambda: chunk(ChoiceDelta(role="assistant", content="")),
    "content": lambda: chunk(ChoiceDelta(content="Hel")),
    "reasoning": lambda: chunk(ChoiceDelta(reasoning_content="hmm", reasoning="hmm")),
    "tool call opening": lambda: chunk(
        ChoiceDelta(
            tool_calls=[
                ToolCallDelta(
                    index=0, id="call_1", type="function", function=ToolCallFunctionDelta(name="f", arguments="")
                )
            ]
        )
    ),
    "tool call arguments": lambda: chunk(
        ChoiceDelta(tool_calls=[ToolCallDelta(index=0, function=ToolCallFunctionDelta(arguments='{"a":'))])
    ),
    "logprobs": lambda: ChatCompletionChunk(
        id="c",
        model="m",
        choices=[
            ChunkChoice(
                index=1, delta=ChoiceDelta(content="Hi"), logprobs=ChoiceLogprobs(content=[logprob_entry()])
            )
        ],
    ),
    "finish": lambda: chunk(ChoiceDelta(), finish_reason="tool_calls"),
    "usage": lambda: ChatCompletionChunk(
        id="c", model="m", choices=[], usage=make_usage(3, 4, reasoning_tokens=2)
    ),
    "fingerprint": lambda: chunk(ChoiceDelta(content="x"), system_fingerprint="fp_1"),
}


@pytest.mark.parametrize("build", CHAT_CHUNKS.values(), ids=CHAT_CHUNKS.keys())
def test_chat_chunks_match_openai_schema(build: Any) -> None:
    validate_response(S.CHAT_COMPLETION_CHUNK, sse_json(build().to_sse()))


@pytest.mark.parametrize(
    "schema,break_it,where",
    [
        (S.CHAT_COMPLETION, lambda b: b.update(system_fingerprint=None), "$.system_fingerprint"),
        (S.CHAT_COMPLETION, lambda b: b["usage"].update(prompt_tokens_details=None), "$.usage.prompt_tokens_details"),
        (S.CHAT_COMPLETION, lambda b: b["choices"][0]["message"].update(tool_calls=None), "tool_calls"),
        (S.CHAT_COMPLETION, lambda b: b["choices"][0].pop("logprobs"), "$.choices[0]"),
        (S.CHAT_COMPLETION, lambda b: b.update(usage=None), "$.usage"),
    ],
    ids=["system_fingerprint", "prompt_tokens_details", "tool_calls", "missing logprobs", "usage"],
)
def test_schema_check_rejects_nulls_openai_forbids(schema: str, break_it: Any, where: str) -> None:
    """The check can fail: bodies like the ones we used to send are caught."""
    body = wire(full_chat_completion())
    validate_response(schema, body)
    break_it(body)
    errors = S.schema_errors(schema, body)
    assert errors and any(where in e for e in errors), errors
    with pytest.raises(S.SchemaMismatch):
        validate_response(schema, body)


def test_schema_check_rejects_chunk_breakage() -> None:
    assert S.schema_errors(S.CHAT_COMPLETION_CHUNK, {**wire(CHAT_CHUNKS["content"]()), "system_fingerprint": None})
    assert S.schema_errors(S.CHAT_COMPLETION_CHUNK, {**wire(CHAT_CHUNKS["usage"]()), "usage": {"prompt_tokens": 1}})


def test_schema_check_strips_only_our_documented_extensions() -> None:
    body = wire(minimal_chat_completion(content="a", reasoning_content="r", reasoning="r"))
    stripped = S.strip_extensions(S.CHAT_COMPLETION, body)
    assert "reasoning_content" in body["choices"][0]["message"]  # the input is left alone
    assert stripped["choices"][0]["message"] == {"role": "assistant", "content": "a", "refusal": None}
    card = {"id": "m", "object": "model", "created": 1, "owned_by": "o", "max_model_len": 8, "random_weights": False}
    assert S.strip_extensions(S.MODEL, card) == {"id": "m", "object": "model", "created": 1, "owned_by": "o"}
    # A wrongly typed OpenAI field next to an extension is still caught.
    bad = {**card, "created": "yesterday"}
    assert S.schema_errors(S.MODEL, bad)


# ------------------------------------------------------------------------------------------------
# End to end through the official SDK's HTTP layer (streaming parse)
# ------------------------------------------------------------------------------------------------


def test_sdk_streams_chat_chunks() -> None:
    opening = ToolCallDelta(
        index=0, id="call_1", type="function", function=ToolCallFunctionDelta(name="f", arguments="")
    )
    events = [
        chunk(ChoiceDelta(role="assistant", content="")).to_sse(),
        chunk(ChoiceDelta(reasoning_content="think")).to_sse(),
        chunk(ChoiceDelta(content="Hi")).to_sse(),
        chunk(ChoiceDelta(tool_calls=[opening])).to_sse(),
        chunk(ChoiceDelta(), finish_reason="tool_calls").to_sse(),
        ChatCompletionChunk(id="chatcmpl-1", created=1, model="m", choices=[], usage=make_usage(1, 2)).to_sse(),
    ]
    client = sdk_client(lambda request: sse_response(events))
    got = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert len(got) == len(events)
    assert got[0].choices[0].delta.role == "assistant"
    assert got[1].choices[0].delta.model_extra == {"reasoning_content": "think"}
    assert got[2].choices[0].delta.content == "Hi"
    calls = got[3].choices[0].delta.tool_calls
    assert calls is not None and calls[0].id == "call_1" and calls[0].function is not None
    assert calls[0].function.name == "f"
    assert got[4].choices[0].finish_reason == "tool_calls"
    assert got[5].usage is not None and got[5].usage.total_tokens == 3

"""protocol.py: request validation -> OpenAI 400s, sampling mapping, and response shapes the SDK parses."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from openai.types import Completion as SDKCompletion
from openai.types import CompletionUsage as SDKUsage
from openai.types import Model as SDKModel
from openai.types.chat import ChatCompletion as SDKChatCompletion
from openai.types.chat import ChatCompletionChunk as SDKChatCompletionChunk
from pydantic import ValidationError

import gptoss.api.chat.protocol as P
from gptoss.engine.types import SamplingParams
from gptoss.errors import APIError
from tests import openai_schema as S
from tests.openai_schema import validate_response

USER = {"role": "user", "content": "Hello"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "messages": [USER], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "prompt": "Once upon a time", **fields}


def api_error(cls: type, body: Any) -> APIError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return P.validation_error_to_api_error(info.value)


# ------------------------------------------------------------------------------------------------
# Chat requests
# ------------------------------------------------------------------------------------------------


def test_minimal_chat_request_defaults() -> None:
    req = P.ChatCompletionRequest.model_validate(chat())
    assert isinstance(req.messages[0], P.UserMessage)
    assert req.n == 1
    assert req.include_reasoning is True
    assert req.effective_reasoning_effort() == "medium"
    assert req.requested_max_tokens() is None
    assert req.stop_sequences() == []
    assert req.include_usage() is False


def test_unknown_fields_are_ignored() -> None:
    body = chat(metadata={"a": "b"}, store=True, service_tier="flex", frobnicate=1)
    body["messages"] = [{**USER, "extra_field": 1}]
    req = P.ChatCompletionRequest.model_validate(body)
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
    req = P.ChatCompletionRequest.model_validate(body)
    kinds = [type(m) for m in req.messages]
    assert kinds == [
        P.SystemMessage,
        P.DeveloperMessage,
        P.UserMessage,
        P.AssistantMessage,
        P.ToolMessage,
        P.AssistantMessage,
    ]
    assistant = req.messages[3]
    assert isinstance(assistant, P.AssistantMessage)
    assert assistant.tool_calls is not None and assistant.tool_calls[0].function.name == "f"
    assert assistant.reasoning_text() == "thinking"
    last = req.messages[5]
    assert isinstance(last, P.AssistantMessage) and last.reasoning_text() == "other-style reasoning"
    tool = req.messages[4]
    assert isinstance(tool, P.ToolMessage) and tool.tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("plain", "plain"),
        ([{"type": "text", "text": "a"}], "a"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
    ],
)
def test_content_as_string_or_text_parts(content: Any, text: str) -> None:
    req = P.ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": content}]))
    message = req.messages[0]
    assert isinstance(message, P.UserMessage)
    assert message.text_content() == text


@pytest.mark.parametrize(
    ("part", "model"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}, P.ImageContentPart),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, P.InputAudioContentPart),
        ({"type": "file", "file": {"file_id": "file-1"}}, P.FileContentPart),
    ],
)
def test_non_text_parts_parse_but_content_text_refuses_them(part: dict[str, Any], model: type) -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, part]}])
    req = P.ChatCompletionRequest.model_validate(body)
    message = req.messages[0]
    assert isinstance(message, P.UserMessage) and isinstance(message.content, list)
    assert isinstance(message.content[1], model)
    with pytest.raises(APIError) as info:
        message.text_content(param="messages[0].content")
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[1]"
    assert part["type"] in info.value.message


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
    message = P.ChatCompletionRequest.model_validate(body).messages[1]
    assert isinstance(message, P.AssistantMessage)
    assert message.text_content() == "no"
    assert message.tool_calls is not None and json.loads(message.tool_calls[0].function.arguments) == {"x": 1}


def test_reasoning_effort_precedence() -> None:
    def effort(**fields: Any) -> str:
        return P.ChatCompletionRequest.model_validate(chat(**fields)).effective_reasoning_effort()

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
    assert P.ChatCompletionRequest.model_validate(chat(**fields)).requested_max_tokens() == expected


def test_valid_edge_values_are_accepted() -> None:
    req = P.ChatCompletionRequest.model_validate(
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
    assert isinstance(req.tool_choice, P.NamedToolChoice)
    assert req.include_usage() is True


def test_top_logprobs_zero_without_logprobs_is_tolerated() -> None:
    req = P.ChatCompletionRequest.model_validate(chat(top_logprobs=0))
    assert req.top_logprobs == 0


def test_fields_we_can_honour_or_ignore_harmlessly_are_accepted() -> None:
    req = P.ChatCompletionRequest.model_validate(
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
    assert req.n == 1 and req.include_usage() is True
    assert "functions" not in req.model_dump() and "verbosity" not in req.model_dump()
    assert P.CompletionRequest.model_validate(completion(n=None)).n == 1


def test_bounds_accept_their_limits() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(P.MAX_TOOLS)]
    req = P.ChatCompletionRequest.model_validate(
        chat(
            messages=[USER] * P.MAX_MESSAGES,
            max_tokens=P.MAX_TOKENS_LIMIT,
            max_completion_tokens=P.MAX_TOKENS_LIMIT,
            top_k=P.HARMONY_VOCAB_SIZE,
            logit_bias={str(P.HARMONY_VOCAB_SIZE - 1 - i): 1 for i in range(P.MAX_LOGIT_BIAS)},
            stop=["x" * P.MAX_STOP_LENGTH] * P.MAX_STOP_SEQUENCES,
            tools=tools,
            seed=2**64 - 1,
        )
    )
    assert len(req.messages) == 2048 and len(req.tools or ()) == 128 and len(req.logit_bias or {}) == 1024
    assert P.CompletionRequest.model_validate(completion(prompt=["a"] * 64)).prompts() == ["a"] * 64
    assert len(P.CompletionRequest.model_validate(completion(prompt=[[7]] * 8, n=8)).prompts()) == 8
    last = P.HARMONY_VOCAB_SIZE - 1
    assert P.CompletionRequest.model_validate(completion(prompt=[last], max_tokens=2**31 - 1)).prompts() == [[last]]


@pytest.mark.parametrize("choice", ["none", "auto"])
def test_tool_choice_modes_without_tools(choice: str) -> None:
    assert P.ChatCompletionRequest.model_validate(chat(tool_choice=choice)).tool_choice == choice


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
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.type", "json_schema"),
    # OpenAI features we cannot honour: refused, not ignored.
    ({"response_format": {"type": "json_object"}}, "response_format.type", "'json_object' is not supported"),
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
    ({"top_k": P.HARMONY_VOCAB_SIZE + 1}, "top_k", "less than or equal to 201088"),
    ({"logit_bias": {"99999999999999999999": 1}}, "logit_bias", "below the vocabulary size 201088"),
    ({"logit_bias": {str(P.HARMONY_VOCAB_SIZE): 1}}, "logit_bias", "below the vocabulary size"),
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
    err = api_error(P.ChatCompletionRequest, chat(**fields))
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.param == param
    assert fragment in err.message
    assert err.message.startswith(param)


def test_missing_required_fields() -> None:
    err = api_error(P.ChatCompletionRequest, {"model": "m"})
    assert (err.param, err.code) == ("messages", None)
    assert err.message == "messages: Field required"
    err = api_error(P.ChatCompletionRequest, {"messages": [USER]})
    assert err.param == "model"


def test_non_finite_numbers_are_rejected() -> None:
    err = api_error(P.ChatCompletionRequest, chat(temperature=math.nan))
    assert err.param == "temperature" and "finite" in err.message


# ------------------------------------------------------------------------------------------------
# Completion requests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "batch"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompt_forms(prompt: Any, batch: list[Any]) -> None:
    req = P.CompletionRequest.model_validate(completion(prompt=prompt))
    assert req.prompts() == batch


def test_completion_defaults_and_best_of_equal_to_n() -> None:
    req = P.CompletionRequest.model_validate(completion())
    assert req.max_tokens == 16  # OpenAI's default for the legacy endpoint
    assert req.n == 1 and req.logprobs is None and req.suffix is None
    req = P.CompletionRequest.model_validate(completion(best_of=3, n=3, suffix=None, ignored=True))
    assert req.best_of == 3


INVALID_COMPLETION: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": []}, "prompt", "must not be empty"),
    ({"prompt": [[]]}, "prompt", "must not be empty"),
    ({"prompt": ["a", ""]}, "prompt", "must not be empty"),
    ({"prompt": [1, -2]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [[1], [True]]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [P.HARMONY_VOCAB_SIZE]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [[1], [10**20]]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": ["a"] * 65}, "prompt", "at most 64 prompts"),
    ({"prompt": [[1]] * 65}, "prompt", "at most 64 prompts"),
    ({"prompt": ["a"] * 9, "n": 8}, "n", "at most 64; got n=8 for 9 prompts"),
    ({"prompt": [[1]] * 33, "n": 2, "best_of": 2}, "n", "at most 64"),
    ({"max_tokens": 2**31}, "max_tokens", "less than or equal to 2147483647"),
    ({"logit_bias": {"99999999999999999999": 1}}, "logit_bias", "below the vocabulary size 201088"),
    ({"top_k": 10**9}, "top_k", "less than or equal to 201088"),
    ({"stop": "x" * 257}, "stop", "at most 256 characters"),
    ({"seed": 2**64}, "seed", "less than or equal to 18446744073709551615"),
    ({"prompt": ["a", 1]}, "prompt", "must be a string"),
    ({"prompt": {"text": "a"}}, "prompt", "must be a string"),
    ({"best_of": 2}, "best_of", "best_of must be omitted or equal to n"),
    ({"best_of": 2, "n": 3}, "best_of", "equal to n"),
    ({"suffix": "the end"}, "suffix", "suffix is not supported"),
    ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"logprobs": -1}, "logprobs", "greater than or equal to 0"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"n": 9}, "n", "less than or equal to 8"),
    ({"echo": "yes please"}, "echo", "valid boolean"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "integer token ids"),
    ({"stop": ["a"] * 5}, "stop", "at most 4"),
    ({"top_k": -1}, "top_k", "greater than or equal to 0"),
    ({"repetition_penalty": -1}, "repetition_penalty", "greater than 0"),
]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"), INVALID_COMPLETION, ids=[f"{c[1]}:{c[2]}" for c in INVALID_COMPLETION]
)
def test_invalid_completion_request_is_a_400_naming_the_param(
    fields: dict[str, Any], param: str, fragment: str
) -> None:
    err = api_error(P.CompletionRequest, completion(**fields))
    assert err.status == 400
    assert err.param == param
    assert fragment in err.message


def test_suffix_message_is_exact() -> None:
    assert api_error(P.CompletionRequest, completion(suffix="x")).message == "suffix is not supported"


# ------------------------------------------------------------------------------------------------
# Error conversion for FastAPI and raw bodies
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_client() -> TestClient:
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        err = P.validation_error_to_api_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.post("/v1/chat/completions")
    async def chat_route(req: P.ChatCompletionRequest) -> dict[str, Any]:
        return {"n": req.n}

    return TestClient(app)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (json.dumps(chat(temperature=3)), "temperature", "temperature: Input should be less than or equal to 2"),
        (
            json.dumps(chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])),
            "messages[0].content[0].text",
            "messages[0].content[0].text: Input should be a valid string",
        ),
        (
            json.dumps(chat(functions=[{"name": "f"}])),
            "functions",
            "functions is deprecated and not supported; declare them in tools",
        ),
        (
            json.dumps(chat(messages=[{"role": "assistant", "function_call": {"name": "f", "arguments": ""}}])),
            "messages[0].function_call",
            "messages[0].function_call: function_call is deprecated and not supported here; send tool_calls",
        ),
        ('{"model": "m", "messages": [', None, "Invalid JSON body: Expecting value (at char 28)"),
        ("[]", None, "Invalid request body: Input should be a valid dictionary or object to extract fields from"),
    ],
)
def test_fastapi_validation_errors_become_openai_errors(
    fastapi_client: TestClient, body: str, param: str | None, message: str
) -> None:
    r = fastapi_client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"] == message
    assert error["type"] == "invalid_request_error"


def test_fastapi_valid_body_passes(fastapi_client: TestClient) -> None:
    r = fastapi_client.post("/v1/chat/completions", json=chat(n=3, unknown=1))
    assert r.status_code == 200 and r.json() == {"n": 3}


def test_parse_request() -> None:
    req = P.parse_request(P.ChatCompletionRequest, json.dumps(chat(n=2)).encode())
    assert isinstance(req, P.ChatCompletionRequest) and req.n == 2
    with pytest.raises(APIError) as info:
        P.parse_request(P.ChatCompletionRequest, b"{nope")
    assert info.value.status == 400 and info.value.param is None
    assert info.value.message.startswith("Invalid JSON body: ")
    with pytest.raises(APIError) as info:
        P.parse_request(P.CompletionRequest, completion(logprobs=9))
    assert info.value.param == "logprobs" and info.value.code == "invalid_value"


# ------------------------------------------------------------------------------------------------
# Sampling parameters
# ------------------------------------------------------------------------------------------------


def test_chat_to_sampling_params_defaults() -> None:
    req = P.ChatCompletionRequest.model_validate(chat())
    assert P.to_sampling_params(req, max_tokens=100) == SamplingParams(max_tokens=100)


def test_chat_to_sampling_params_maps_every_field() -> None:
    req = P.ChatCompletionRequest.model_validate(
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
    params = P.to_sampling_params(req, max_tokens=64, stop_token_ids=(200002, 200012), seed_offset=2)
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
    req = P.ChatCompletionRequest.model_validate(chat(**fields))
    assert P.to_sampling_params(req, max_tokens=1).logprobs == expected


def test_seed_offsets_give_each_choice_its_own_seed() -> None:
    req = P.ChatCompletionRequest.model_validate(chat(seed=100, n=3))
    assert [P.to_sampling_params(req, max_tokens=1, seed_offset=i).seed for i in range(req.n)] == [100, 101, 102]
    unseeded = P.ChatCompletionRequest.model_validate(chat(n=3))
    assert P.to_sampling_params(unseeded, max_tokens=1, seed_offset=2).seed is None


@pytest.mark.parametrize("cls,body", [(P.ChatCompletionRequest, chat), (P.CompletionRequest, completion)])
def test_largest_seed_with_n_wraps_instead_of_overflowing(cls: Any, body: Any) -> None:
    """The crash body ``"seed": 18446744073709551615, "n": 2`` now gives seeds the engine takes."""
    req = cls.model_validate(body(seed=2**64 - 1, n=2))
    seeds = [P.to_sampling_params(req, max_tokens=1, seed_offset=i).seed for i in range(req.n)]
    assert seeds == [2**64 - 1, 0]
    torch = pytest.importorskip("torch")
    for seed in seeds:  # what the sampler does with a request's seed
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63, 2**64 - P.MAX_N])
def test_every_accepted_seed_maps_into_the_unsigned_range(seed: int) -> None:
    req = P.ChatCompletionRequest.model_validate(chat(seed=seed, n=P.MAX_N))
    for i in range(req.n):
        got = P.to_sampling_params(req, max_tokens=1, seed_offset=i).seed
        assert got is not None and 0 <= got < 2**64 and got == (seed + i) % 2**64


@pytest.mark.parametrize("cls,body", [(P.ChatCompletionRequest, chat), (P.CompletionRequest, completion)])
def test_out_of_vocabulary_logit_bias_is_a_400(cls: Any, body: Any) -> None:
    """The crash body ``"logit_bias": {"99999999999999999999": 1}`` no longer reaches the engine."""
    err = api_error(cls, body(logit_bias={"99999999999999999999": 1}))
    assert (err.status, err.param, err.code) == (400, "logit_bias", "invalid_value")


def test_temperature_zero_is_kept_not_defaulted() -> None:
    req = P.ChatCompletionRequest.model_validate(chat(temperature=0))
    assert P.to_sampling_params(req, max_tokens=1).temperature == 0.0


def test_completion_to_sampling_params() -> None:
    req = P.CompletionRequest.model_validate(completion(logprobs=2, temperature=0.2, seed=5, logit_bias={"3": 1}))
    params = P.to_sampling_params(req, max_tokens=req.max_tokens or 16, seed_offset=1)
    assert (params.logprobs, params.temperature, params.seed, params.max_tokens) == (2, 0.2, 6, 16)
    assert params.logit_bias == {3: 1.0}
    assert P.to_sampling_params(P.CompletionRequest.model_validate(completion()), max_tokens=1).logprobs is None
    assert P.to_sampling_params(P.CompletionRequest.model_validate(completion(logprobs=0)), max_tokens=1).logprobs == 0


# ------------------------------------------------------------------------------------------------
# Responses: the SDK parses them, and the JSON has OpenAI's exact shape
# ------------------------------------------------------------------------------------------------


def top(token: str, logprob: float) -> P.TopLogprob:
    return P.TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def full_chat_completion() -> P.ChatCompletion:
    return P.ChatCompletion(
        id="chatcmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        system_fingerprint="fp_1",
        choices=[
            P.ChatChoice(
                index=0,
                message=P.ChatMessage(content="Hi!", reasoning_content="The user greets me."),
                logprobs=P.ChoiceLogprobs(
                    content=[
                        P.TokenLogprob(
                            token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=[top("Hi", -0.1), top("Hey", -2.5)]
                        )
                    ]
                ),
                finish_reason="stop",
            ),
            P.ChatChoice(
                index=1,
                message=P.ChatMessage(
                    content=None,
                    reasoning="Need the weather.",
                    tool_calls=[
                        P.ToolCall(
                            id="call_1", function=P.FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
                        )
                    ],
                ),
                finish_reason="tool_calls",
            ),
        ],
        usage=P.Usage.build(10, 20, reasoning_tokens=5, cached_tokens=0),
    )


def test_chat_completion_sdk_round_trip() -> None:
    ours = full_chat_completion()
    sdk = SDKChatCompletion.model_validate(ours.model_dump())
    assert sdk.choices[0].message.content == "Hi!"
    assert sdk.choices[0].logprobs is not None and sdk.choices[0].logprobs.content is not None
    assert sdk.choices[0].logprobs.content[0].top_logprobs[1].token == "Hey"
    call = sdk.choices[1].message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
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


def chunk(delta: P.ChoiceDelta, finish_reason: Any = None, **kwargs: Any) -> P.ChatCompletionChunk:
    return P.ChatCompletionChunk(
        id="chatcmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        choices=[P.ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        **kwargs,
    )


def sse_json(sse: str) -> dict[str, Any]:
    assert sse.startswith("data: ") and sse.endswith("\n\n")
    assert "\n" not in sse[: -2]
    return json.loads(sse[len("data: ") : -2])


def test_chunk_sse_json_is_exact() -> None:
    first = sse_json(chunk(P.ChoiceDelta(role="assistant", content="")).to_sse())
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
    middle = sse_json(chunk(P.ChoiceDelta(content="Hel")).to_sse())
    assert middle["choices"][0]["delta"] == {"content": "Hel"}
    assert middle["choices"][0]["finish_reason"] is None and middle["usage"] is None
    reasoning = sse_json(chunk(P.ChoiceDelta(reasoning_content="hmm", reasoning="hmm")).to_sse())
    assert reasoning["choices"][0]["delta"] == {"reasoning_content": "hmm", "reasoning": "hmm"}
    last = sse_json(chunk(P.ChoiceDelta(), finish_reason="stop").to_sse())
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_tool_call_delta_json() -> None:
    opening = P.ToolCallDelta(
        index=0, id="call_1", type="function", function=P.ToolCallFunctionDelta(name="f", arguments="")
    )
    more = P.ToolCallDelta(index=0, function=P.ToolCallFunctionDelta(arguments='{"a":'))
    assert sse_json(chunk(P.ChoiceDelta(tool_calls=[opening])).to_sse())["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    assert sse_json(chunk(P.ChoiceDelta(tool_calls=[more])).to_sse())["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]
    }


def test_usage_chunk_and_sdk_parse_of_chunks() -> None:
    usage_chunk = P.ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=P.Usage.build(3, 4))
    data = sse_json(usage_chunk.to_sse())
    assert data["choices"] == [] and data["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }
    expected = SDKUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert SDKChatCompletionChunk.model_validate(data).usage == expected
    first = chunk(P.ChoiceDelta(role="assistant", content="x"))
    parsed = SDKChatCompletionChunk.model_validate(sse_json(first.to_sse()))
    assert parsed.choices[0].delta.role == "assistant" and parsed.choices[0].finish_reason is None
    assert parsed.usage is None


def full_completion(finish_reason: Any = "length") -> P.Completion:
    return P.Completion(
        id="cmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        choices=[
            P.CompletionChoice(
                text=" there was",
                index=0,
                logprobs=P.CompletionLogprobs(
                    tokens=[" there", " was"],
                    token_logprobs=[-0.5, -1.0],
                    top_logprobs=[{" there": -0.5}, {" was": -1.0, " is": -2.0}],
                    text_offset=[16, 22],
                ),
                finish_reason=finish_reason,
            )
        ],
        usage=P.Usage.build(4, 2),
    )


def test_completion_sdk_round_trip() -> None:
    sdk = SDKCompletion.model_validate(full_completion().model_dump())
    assert sdk.object == "text_completion"
    assert sdk.choices[0].text == " there was" and sdk.choices[0].finish_reason == "length"
    assert sdk.choices[0].logprobs is not None
    assert sdk.choices[0].logprobs.top_logprobs == [{" there": -0.5}, {" was": -1.0, " is": -2.0}]
    assert sdk.usage is not None and sdk.usage.total_tokens == 6


def test_completion_stream_chunk_json() -> None:
    piece = P.Completion(id="c", created=1, model="m", choices=[P.CompletionChoice(text="a", index=0)])
    data = sse_json(piece.to_sse())
    assert data == {
        "id": "c",
        "choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}],
        "created": 1,
        "model": "m",
        "object": "text_completion",
    }


def test_non_finite_logprobs_are_clamped() -> None:
    lp = P.TokenLogprob(token="x", logprob=float("-inf"), top_logprobs=[P.TopLogprob(token="x", logprob=float("nan"))])
    legacy = P.CompletionLogprobs(
        tokens=["x"], token_logprobs=[float("-inf")], top_logprobs=[{"x": float("-inf")}], text_offset=[0]
    )
    assert (lp.logprob, lp.top_logprobs[0].logprob) == (P.MIN_LOGPROB, P.MIN_LOGPROB)
    assert legacy.token_logprobs == [P.MIN_LOGPROB] and legacy.top_logprobs == [{"x": P.MIN_LOGPROB}]
    assert json.loads(lp.model_dump_json())["logprob"] == -9999.0


def test_model_card_and_list() -> None:
    card = P.ModelCard(id="gpt-oss-20b", created=1, owned_by="openai", max_model_len=131072, random_weights=True)
    listing = P.ModelList(data=[card]).model_dump()
    assert listing["object"] == "list"
    sdk = SDKModel.model_validate(listing["data"][0])
    assert (sdk.id, sdk.object, sdk.owned_by) == ("gpt-oss-20b", "model", "openai")
    assert sdk.model_extra == {"max_model_len": 131072, "random_weights": True}


def test_error_response_mirrors_api_error() -> None:
    err = APIError(400, "temperature: too hot", param="temperature", code="invalid_value")
    assert P.ErrorResponse.from_api_error(err).model_dump() == err.body()


# ------------------------------------------------------------------------------------------------
# Responses against OpenAI's published OpenAPI spec (tests/openai_schema.py)
# ------------------------------------------------------------------------------------------------


def wire(model: Any) -> Any:
    """What goes over the wire: the model's JSON, parsed back."""
    return json.loads(model.model_dump_json())


def tool_call(i: int = 1) -> P.ToolCall:
    return P.ToolCall(id=f"call_{i}", function=P.FunctionCall(name="get_weather", arguments='{"city":"Paris"}'))


def minimal_chat_completion(**message: Any) -> P.ChatCompletion:
    return P.ChatCompletion(
        id="chatcmpl-2",
        model="gpt-oss-20b",
        choices=[P.ChatChoice(index=0, message=P.ChatMessage(**message), finish_reason="stop")],
    )


CHAT_COMPLETIONS = {
    "full": full_chat_completion,
    "bare": lambda: minimal_chat_completion(content="x"),
    "null content, no usage": lambda: minimal_chat_completion(),
    "two tool calls": lambda: minimal_chat_completion(tool_calls=[tool_call(1), tool_call(2)]),
    "both reasoning fields": lambda: minimal_chat_completion(content="a", reasoning_content="r", reasoning="r"),
    "usage without details": lambda: minimal_chat_completion(content="a").model_copy(
        update={"usage": P.Usage.build(1, 2)}
    ),
    "empty logprobs": lambda: P.ChatCompletion(
        id="c",
        model="m",
        choices=[
            P.ChatChoice(
                index=0,
                message=P.ChatMessage(content=""),
                logprobs=P.ChoiceLogprobs(content=[]),
                finish_reason="length",
            )
        ],
        usage=P.Usage.build(1, 0, reasoning_tokens=0),
    ),
}


@pytest.mark.parametrize("build", CHAT_COMPLETIONS.values(), ids=CHAT_COMPLETIONS.keys())
def test_chat_completions_match_openai_schema(build: Any) -> None:
    validate_response(S.CHAT_COMPLETION, wire(build()))


def logprob_entry() -> P.TokenLogprob:
    return P.TokenLogprob(token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=[top("Hi", -0.1), top("Yo", -3.0)])


CHAT_CHUNKS = {
    "role": lambda: chunk(P.ChoiceDelta(role="assistant", content="")),
    "content": lambda: chunk(P.ChoiceDelta(content="Hel")),
    "reasoning": lambda: chunk(P.ChoiceDelta(reasoning_content="hmm", reasoning="hmm")),
    "tool call opening": lambda: chunk(
        P.ChoiceDelta(
            tool_calls=[
                P.ToolCallDelta(
                    index=0, id="call_1", type="function", function=P.ToolCallFunctionDelta(name="f", arguments="")
                )
            ]
        )
    ),
    "tool call arguments": lambda: chunk(
        P.ChoiceDelta(tool_calls=[P.ToolCallDelta(index=0, function=P.ToolCallFunctionDelta(arguments='{"a":'))])
    ),
    "logprobs": lambda: P.ChatCompletionChunk(
        id="c",
        model="m",
        choices=[
            P.ChunkChoice(
                index=1, delta=P.ChoiceDelta(content="Hi"), logprobs=P.ChoiceLogprobs(content=[logprob_entry()])
            )
        ],
    ),
    "finish": lambda: chunk(P.ChoiceDelta(), finish_reason="tool_calls"),
    "usage": lambda: P.ChatCompletionChunk(
        id="c", model="m", choices=[], usage=P.Usage.build(3, 4, reasoning_tokens=2)
    ),
    "fingerprint": lambda: chunk(P.ChoiceDelta(content="x"), system_fingerprint="fp_1"),
}


@pytest.mark.parametrize("build", CHAT_CHUNKS.values(), ids=CHAT_CHUNKS.keys())
def test_chat_chunks_match_openai_schema(build: Any) -> None:
    validate_response(S.CHAT_COMPLETION_CHUNK, sse_json(build().to_sse()))


def echoed_completion() -> P.Completion:
    """echo + logprobs: the first prompt token has no logprob (null, as OpenAI sends it)."""
    return P.Completion(
        id="cmpl-2",
        model="m",
        choices=[
            P.CompletionChoice(
                text="Once upon",
                index=0,
                logprobs=P.CompletionLogprobs(
                    tokens=["Once", " upon"],
                    token_logprobs=[None, -1.5],
                    top_logprobs=[None, {" upon": -1.5}],
                    text_offset=[0, 4],
                ),
                finish_reason="length",
            )
        ],
        usage=P.Usage.build(1, 1),
    )


COMPLETIONS = {
    "full": full_completion,
    "echo with logprobs": echoed_completion,
    "no usage": lambda: P.Completion(
        id="c", model="m", choices=[P.CompletionChoice(text="", index=0, finish_reason="stop")]
    ),
}


@pytest.mark.parametrize("build", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completions_match_openai_schema(build: Any) -> None:
    validate_response(S.COMPLETION, wire(build()))


COMPLETION_CHUNKS = {
    "text": lambda: P.Completion(id="c", model="m", choices=[P.CompletionChoice(text="a", index=0)]),
    "last": lambda: full_completion(finish_reason="stop").model_copy(update={"usage": None}),
    "usage": lambda: P.Completion(id="c", model="m", choices=[], usage=P.Usage.build(4, 2)),
}


@pytest.mark.parametrize("build", COMPLETION_CHUNKS.values(), ids=COMPLETION_CHUNKS.keys())
def test_completion_chunks_match_openai_schema(build: Any) -> None:
    validate_response(S.COMPLETION, sse_json(build().to_sse()), chunk=True)


@pytest.mark.parametrize("max_model_len", [None, 131072])
def test_models_match_openai_schema(max_model_len: int | None) -> None:
    card = P.ModelCard(id="gpt-oss-20b", owned_by="openai", max_model_len=max_model_len, random_weights=True)
    validate_response(S.MODEL, wire(card))
    validate_response(S.MODEL_LIST, wire(P.ModelList(data=[card])))
    assert ("max_model_len" in wire(card)) is (max_model_len is not None)


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


def test_schema_check_rejects_chunk_and_model_breakage() -> None:
    assert S.schema_errors(S.CHAT_COMPLETION_CHUNK, {**wire(CHAT_CHUNKS["content"]()), "system_fingerprint": None})
    assert S.schema_errors(S.CHAT_COMPLETION_CHUNK, {**wire(CHAT_CHUNKS["usage"]()), "usage": {"prompt_tokens": 1}})
    # A legacy chunk's null finish_reason is fine as a chunk, not in a final response.
    text_chunk = wire(COMPLETION_CHUNKS["text"]())
    assert S.schema_errors(S.COMPLETION, text_chunk, chunk=True) == []
    assert S.schema_errors(S.COMPLETION, text_chunk)
    assert S.schema_errors(S.MODEL, {"id": "m", "object": "model", "owned_by": "openai"})  # no created


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
# End to end through the official SDK's HTTP layer (streaming parse, error mapping)
# ------------------------------------------------------------------------------------------------


def sdk_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def sse_response(events: list[str]) -> httpx.Response:
    body = "".join(events) + P.SSE_DONE
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def test_sdk_streams_chat_chunks() -> None:
    opening = P.ToolCallDelta(
        index=0, id="call_1", type="function", function=P.ToolCallFunctionDelta(name="f", arguments="")
    )
    events = [
        chunk(P.ChoiceDelta(role="assistant", content="")).to_sse(),
        chunk(P.ChoiceDelta(reasoning_content="think")).to_sse(),
        chunk(P.ChoiceDelta(content="Hi")).to_sse(),
        chunk(P.ChoiceDelta(tool_calls=[opening])).to_sse(),
        chunk(P.ChoiceDelta(), finish_reason="tool_calls").to_sse(),
        P.ChatCompletionChunk(id="chatcmpl-1", created=1, model="m", choices=[], usage=P.Usage.build(1, 2)).to_sse(),
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


def test_sdk_streams_completion_chunks_and_parses_models() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            listing = P.ModelList(data=[P.ModelCard(id="gpt-oss-20b", owned_by="openai")])
            return httpx.Response(200, json=listing.model_dump())
        events = [
            P.Completion(id="c", created=1, model="m", choices=[P.CompletionChoice(text="a", index=0)]).to_sse(),
            full_completion(finish_reason="stop").to_sse(),
        ]
        return sse_response(events)

    client = sdk_client(handler)
    got = list(client.completions.create(model="m", prompt="x", stream=True))
    assert [c.choices[0].text for c in got] == ["a", " there was"]
    assert got[0].choices[0].finish_reason is None and got[1].choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["gpt-oss-20b"]


def test_sdk_maps_our_400_to_bad_request_error_with_param() -> None:
    err = api_error(P.ChatCompletionRequest, chat(top_p=5))
    body = P.ErrorResponse.from_api_error(err).model_dump()
    client = sdk_client(lambda request: httpx.Response(err.status, json=body))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], top_p=5)
    assert info.value.param == "top_p"
    assert info.value.code == "invalid_value"

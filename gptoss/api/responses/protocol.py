"""Request models of OpenAI's Responses API (``POST /v1/responses``), as this server speaks it.

The request is validated here once, with OpenAI's field names; :mod:`gptoss.api.responses.items`
turns it into a chat request, so generation has one path. What we cannot honour (images, files,
built-in tools, background runs, server-side conversations, prompt templates, automatic
truncation, logprobs) is a 400 naming the field; fields that cannot change the answer are
accepted (``user``, ``safety_identifier``, ``prompt_cache_key``, ``prompt_cache_retention``,
``stream_options``, ``max_tool_calls`` (it caps built-in tools, which we have none of)).

``reasoning.summary`` is accepted: gpt-oss's reasoning is returned whole, as the reasoning
item's ``reasoning_text`` content, and ``summary`` stays empty.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gptoss.api.common.protocol import (
    RefusedFields,
    _check_tool_choice,
    _check_unique_names,
    _field_error,
    _MaxTokens,
    _refuse,
    _RequestModel,
    _Temperature,
    _TopP,
)

MAX_INPUT_ITEMS = 2048  # the chat path's message bound
MAX_TOOLS = 128
MAX_METADATA_KEYS = 16  # OpenAI's bounds on metadata
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
#: ``include`` values we honour. The others name items of built-in tools, which we never produce
#: (asking for their extras is then a no-op, and true), except output logprobs (refused).
INCLUDE_HONOURED = frozenset(
    {
        "reasoning.encrypted_content",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)


def _unsupported(what: str, why: str) -> type[_RequestModel]:
    """A model that refuses every value: the 400 names the type (e.g. an image part) and why."""

    class Unsupported(_RequestModel):
        @model_validator(mode="before")
        @classmethod
        def _refuse_type(cls, value: Any) -> Any:
            kind = value.get("type") if isinstance(value, dict) else None
            raise ValueError(f"{what} of type {kind!r} are not supported: {why}")

    Unsupported.__name__ = f"Unsupported{what.title().replace(' ', '')}"
    return Unsupported


def _text_or(item: Any, name: str) -> Any:
    """``str | list[item]`` with a clean error (and a clean ``param``) when it is neither."""

    def kind(value: Any) -> str | None:
        if isinstance(value, str):
            return f"{name}=text"
        return f"{name}=list" if isinstance(value, (list, tuple)) else None

    return Annotated[
        Union[Annotated[str, Tag(f"{name}=text")], Annotated[list[item], Tag(f"{name}=list")]],
        Discriminator(
            kind,
            custom_error_type="invalid_type",
            custom_error_message=f"Input should be a string or a list of {name.replace('_', ' ')}",
        ),
    ]


def _by_type(known: frozenset[str], default: str | None = None) -> Any:
    """Discriminator: ``type=<value>`` for known types, ``type=other`` for the rest."""

    def tag(value: Any) -> str:
        raw = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return f"type={raw}" if raw in known else "type=other"

    return tag


# ------------------------------------------------------------------------------------------------
# Content parts
# ------------------------------------------------------------------------------------------------


class InputTextPart(_RequestModel):
    type: Literal["input_text"]
    text: str


class OutputTextPart(_RequestModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class RefusalPart(_RequestModel):
    type: Literal["refusal"]
    refusal: str


_TextOnly = _unsupported("content parts", "this model reads text only (input_text, output_text)")

ContentPart = Annotated[
    Union[
        Annotated[InputTextPart, Tag("type=input_text")],
        Annotated[OutputTextPart, Tag("type=output_text")],
        Annotated[RefusalPart, Tag("type=refusal")],
        Annotated[_TextOnly, Tag("type=other")],
    ],
    Discriminator(_by_type(frozenset({"input_text", "output_text", "refusal"}))),
]
ToolOutputPart = Annotated[
    Union[Annotated[InputTextPart, Tag("type=input_text")], Annotated[_TextOnly, Tag("type=other")]],
    Discriminator(_by_type(frozenset({"input_text"}))),
]


class SummaryTextPart(_RequestModel):
    type: Literal["summary_text"]
    text: str


class ReasoningTextPart(_RequestModel):
    type: Literal["reasoning_text"]
    text: str


# ------------------------------------------------------------------------------------------------
# Input items
# ------------------------------------------------------------------------------------------------


class MessageItem(_RequestModel):
    """A message; ``type`` may be left out (OpenAI's EasyInputMessage)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: _text_or(ContentPart, "content_parts")  # type: ignore[valid-type]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @model_validator(mode="after")
    def _refusal_only_from_assistant(self) -> MessageItem:
        if self.role != "assistant" and isinstance(self.content, list):
            for i, part in enumerate(self.content):
                if isinstance(part, RefusalPart):
                    raise _field_error(
                        type(self).__name__, f"content.{i}", "refusal parts belong to assistant messages", "refusal"
                    )
        return self


class FunctionCallItem(_RequestModel):
    """A call the model made earlier (output of a previous response, sent back)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=64)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("arguments", mode="before")
    @classmethod
    def _encode_object_arguments(cls, value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (dict, list)) else value


class FunctionCallOutputItem(_RequestModel):
    """The caller's result of a function call."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=64)
    output: _text_or(ToolOutputPart, "content_parts")  # type: ignore[valid-type]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningItem(_RequestModel):
    """Reasoning of an earlier turn: ``content`` as we return it, else ``summary``, else our ``encrypted_content``."""

    type: Literal["reasoning"]
    summary: list[SummaryTextPart] = Field(default_factory=list)
    content: list[ReasoningTextPart] | None = None
    encrypted_content: str | None = None
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


InputItem = Annotated[
    Union[
        Annotated[MessageItem, Tag("type=message")],
        Annotated[FunctionCallItem, Tag("type=function_call")],
        Annotated[FunctionCallOutputItem, Tag("type=function_call_output")],
        Annotated[ReasoningItem, Tag("type=reasoning")],
        Annotated[
            _unsupported(
                "input items",
                "send messages, function_call, function_call_output and reasoning items "
                "(item references and built-in tool items are not served here)",
            ),
            Tag("type=other"),
        ],
    ],
    Discriminator(_by_type(frozenset({"message", "function_call", "function_call_output", "reasoning"}), "message")),
]


# ------------------------------------------------------------------------------------------------
# Tools, tool choice, text format, reasoning
# ------------------------------------------------------------------------------------------------


class FunctionTool(_RequestModel):
    """A function tool, flat as the Responses API declares it."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


Tool = Annotated[
    Union[
        Annotated[FunctionTool, Tag("type=function")],
        Annotated[_unsupported("tools", "this server runs function tools only (type 'function')"), Tag("type=other")],
    ],
    Discriminator(_by_type(frozenset({"function"}))),
]


class FunctionToolChoice(_RequestModel):
    type: Literal["function"]
    name: str


def _tool_choice_kind(value: Any) -> str:
    if isinstance(value, str):
        return "tool_choice=mode"
    if isinstance(value, (dict, FunctionToolChoice)):
        kind = value.get("type") if isinstance(value, dict) else value.type
        return "tool_choice=function" if kind == "function" else "tool_choice=other"
    return "tool_choice=other"


class _OtherToolChoice(_RequestModel):
    @model_validator(mode="before")
    @classmethod
    def _refuse_type(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else value
        raise ValueError(
            f"tool_choice {kind!r} is not supported: use 'none', 'auto', 'required' or "
            '{"type": "function", "name": ...}'
        )


ToolChoice = Annotated[
    Union[
        Annotated[Literal["none", "auto", "required"], Tag("tool_choice=mode")],
        Annotated[FunctionToolChoice, Tag("tool_choice=function")],
        Annotated[_OtherToolChoice, Tag("tool_choice=other")],
    ],
    Discriminator(_tool_choice_kind),
]


class TextFormat(_RequestModel):
    """``text.format``: handed to the chat path as ``response_format`` (which decides what it honours)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def as_response_format(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        spec = {"name": self.name, "schema": self.schema_, "description": self.description, "strict": self.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}

    def echo(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "json_schema":
            out.update(name=self.name, schema=self.schema_ or {}, strict=self.strict)
            if self.description is not None:
                out["description"] = self.description
        return out


class TextParam(_RequestModel):
    format: TextFormat | None = None
    verbosity: str | None = None  # the chat path refuses what it cannot honour


class ReasoningParam(_RequestModel):
    effort: Literal["low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None

    @field_validator("effort", mode="before")
    @classmethod
    def _known_effort(cls, value: Any) -> Any:
        if value in ("none", "minimal", "xhigh"):
            raise ValueError(f"reasoning effort {value!r} is not supported by gpt-oss: use 'low', 'medium' or 'high'")
        return value


class StreamOptions(_RequestModel):
    # Obfuscation pads delta events to hide their sizes; leaving it out does not change the text.
    include_obfuscation: bool | None = None


def _honoured_include(value: Any) -> bool:
    return isinstance(value, list) and all(v in INCLUDE_HONOURED for v in value)


# ------------------------------------------------------------------------------------------------
# The request
# ------------------------------------------------------------------------------------------------


class ResponseCreateRequest(_RequestModel):
    """POST /v1/responses."""

    _REFUSED: ClassVar[RefusedFields] = {
        "background": (lambda v: v is False, "background responses are not supported; omit background"),
        "conversation": (None, "conversation objects are not supported; use previous_response_id"),
        "prompt": (None, "prompt templates are not supported; send instructions and input"),
        "truncation": (
            lambda v: v == "disabled",
            "truncation 'auto' is not supported: a conversation longer than the context is a 400",
        ),
        "context_management": (None, "context_management (compaction) is not supported"),
        "top_logprobs": (lambda v: v == 0, "logprobs are not supported on /v1/responses; use /v1/chat/completions"),
        "service_tier": (lambda v: v in ("auto", "default"), "service_tier: only 'auto' and 'default' exist here"),
        "include": (
            _honoured_include,
            "include 'message.output_text.logprobs' is not supported (no logprobs here); the other values are accepted",
        ),
    }

    model: str
    input: _text_or(InputItem, "input_items")  # type: ignore[valid-type]
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningParam | None = None
    max_output_tokens: _MaxTokens = None
    temperature: _Temperature = None
    top_p: _TopP = None
    text: TextParam | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    include: list[str] | None = None
    user: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None  # a cache hint: it never changes the output
    prompt_cache_retention: str | None = None
    max_tool_calls: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, value: Any) -> Any:
        _refuse(cls.__name__, value, cls._REFUSED)
        return value

    @field_validator("input")
    @classmethod
    def _bounded_input(cls, value: str | list[Any]) -> str | list[Any]:
        if not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > MAX_INPUT_ITEMS:
            raise ValueError(f"at most {MAX_INPUT_ITEMS} input items are allowed, got {len(value)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys are allowed, got {len(value)}")
        for key, val in value.items():
            if len(key) > MAX_METADATA_KEY or len(val) > MAX_METADATA_VALUE:
                raise ValueError(
                    f"metadata keys are at most {MAX_METADATA_KEY} characters and values at most "
                    f"{MAX_METADATA_VALUE} (key {key[:MAX_METADATA_KEY]!r})"
                )
        return value

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, value: list[FunctionTool] | None) -> list[FunctionTool] | None:
        _check_unique_names([t.name for t in value or ()])
        return value

    @model_validator(mode="after")
    def _tool_choice_matches_tools(self) -> ResponseCreateRequest:
        choice = self.tool_choice
        named = choice.name if isinstance(choice, FunctionToolChoice) else None
        _check_tool_choice(type(self).__name__, {t.name for t in self.tools or ()}, choice, named)
        return self

    @property
    def stores(self) -> bool:
        """``store`` defaults to true, as on OpenAI."""
        return self.store is not False

    @property
    def wants_encrypted_reasoning(self) -> bool:
        return "reasoning.encrypted_content" in (self.include or ())

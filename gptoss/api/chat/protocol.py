"""Request and response models of ``POST /v1/chat/completions``.

What they share with the other endpoints, and the conventions they follow, is in
:mod:`gptoss.api.common.protocol`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from gptoss.api.common.protocol import (
    MAX_N,
    RefusedFields,
    ResponseFormat,
    StreamOptions,
    Usage,
    _check_tool_choice,
    _check_unique_names,
    _clamp_logprob,
    _MaxTokens,
    _MinP,
    _now,
    _OmitNone,
    _Penalty,
    _refuse,
    _RepetitionPenalty,
    _RequestModel,
    _SamplingRequest,
    _Seed,
    _stop_list,
    _tag_by,
    _Temperature,
    _TopK,
    _TopP,
)
from gptoss.errors import bad_request

ReasoningEffort = Literal["low", "medium", "high"]
DEFAULT_REASONING_EFFORT: ReasoningEffort = "medium"
MAX_TOP_LOGPROBS = 20
MAX_MESSAGES = 2048
MAX_TOOLS = 128  # OpenAI's limit


# ------------------------------------------------------------------------------------------------
# Chat request: content parts and messages
# ------------------------------------------------------------------------------------------------


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "content=text"
    if isinstance(value, (list, tuple)):
        return "content=parts"
    return None


def _content(parts: Any) -> Any:
    """``str | list[parts]`` with a clean error when it is neither."""
    return Annotated[
        Union[Annotated[str, Tag("content=text")], Annotated[list[parts], Tag("content=parts")]],
        Discriminator(
            _content_kind,
            custom_error_type="invalid_content",
            custom_error_message="Input should be a string or a list of content parts",
        ),
    ]


class TextContentPart(_RequestModel):
    text: str
    type: Literal["text"]

    @model_validator(mode="before")
    @classmethod
    def _type_first(cls, value: Any) -> Any:
        # Where only text is allowed (system, developer, tool), name the wrong type, not a missing "text".
        if isinstance(value, dict) and value.get("type") != "text":
            raise ValueError(f"Input should be a content part with type 'text', got type {value.get('type')!r}")
        return value


class ImageURL(_RequestModel):
    url: str
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImageContentPart(_RequestModel):
    """Parsed so the renderer can answer a clear 400 (gpt-oss is text-only)."""

    image_url: ImageURL
    type: Literal["image_url"]


class InputAudio(_RequestModel):
    data: str
    format: str


class InputAudioContentPart(_RequestModel):
    """Parsed so the renderer can answer a clear 400 (gpt-oss is text-only)."""

    input_audio: InputAudio
    type: Literal["input_audio"]


class FileData(_RequestModel):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FileContentPart(_RequestModel):
    """Parsed so the renderer can answer a clear 400 (gpt-oss is text-only)."""

    file: FileData
    type: Literal["file"]


class RefusalContentPart(_RequestModel):
    refusal: str
    type: Literal["refusal"]


UserContentPart = Annotated[
    Union[
        Annotated[TextContentPart, Tag("type=text")],
        Annotated[ImageContentPart, Tag("type=image_url")],
        Annotated[InputAudioContentPart, Tag("type=input_audio")],
        Annotated[FileContentPart, Tag("type=file")],
    ],
    Discriminator(
        _tag_by("type"),
        custom_error_type="invalid_content_part",
        custom_error_message="Input should be a content part with type 'text', 'image_url', 'input_audio' or 'file'",
    ),
]
AssistantContentPart = Annotated[
    Union[Annotated[TextContentPart, Tag("type=text")], Annotated[RefusalContentPart, Tag("type=refusal")]],
    Discriminator(
        _tag_by("type"),
        custom_error_type="invalid_content_part",
        custom_error_message="Input should be a content part with type 'text' or 'refusal'",
    ),
]
TextContent = _content(TextContentPart)  # system, developer and tool messages
UserContent = _content(UserContentPart)
AssistantContent = _content(AssistantContentPart)


def content_text(content: str | list[Any] | None, *, param: str = "content") -> str | None:
    """Message content as plain text: text parts joined by newlines (as vLLM does).

    Raises a 400 naming ``param`` for image, audio and file parts: gpt-oss reads text only.
    Refusal parts (assistant history) are kept as their text.
    """
    if content is None or isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if isinstance(part, TextContentPart):
            texts.append(part.text)
        elif isinstance(part, RefusalContentPart):
            texts.append(part.refusal)
        else:
            raise bad_request(
                f"Content parts of type '{part.type}' are not supported: this model is text-only",
                param=f"{param}[{i}]",
                code="invalid_value",
            )
    return "\n".join(texts)


class FunctionCall(BaseModel):
    """A function call's name and JSON-encoded arguments (requests and responses)."""

    name: str
    arguments: str

    @field_validator("arguments", mode="before")
    @classmethod
    def _encode_object_arguments(cls, value: Any) -> Any:
        # Some clients send the arguments back decoded; OpenAI's type is a JSON string.
        return json.dumps(value) if isinstance(value, (dict, list)) else value


class ToolCall(BaseModel):
    """A tool call in an assistant message (requests and responses)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_RequestModel):
    content: TextContent
    role: Literal["system"]
    name: str | None = None


class DeveloperMessage(_RequestModel):
    content: TextContent
    role: Literal["developer"]
    name: str | None = None


class UserMessage(_RequestModel):
    content: UserContent
    role: Literal["user"]
    name: str | None = None


class AssistantMessage(_RequestModel):
    """A previous assistant turn; may carry tool calls and the reasoning we sent with it."""

    role: Literal["assistant"]
    content: AssistantContent | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    # --- extensions (not in OpenAI's API) ---
    # Reasoning (chain of thought) as our responses return it, sent back by the client.
    reasoning_content: str | None = None
    # Same, under the name OpenRouter-style clients use.
    reasoning: str | None = None

    _REFUSED: ClassVar[RefusedFields] = {
        "function_call": (None, "function_call is deprecated and not supported here; send tool_calls"),
        "audio": (None, "audio is not supported: this model reads and writes text only"),
    }

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, value: Any) -> Any:
        # Dropping these from the history would silently change the conversation the model sees.
        _refuse(cls.__name__, value, cls._REFUSED)
        return value


class ToolMessage(_RequestModel):
    content: TextContent
    role: Literal["tool"]
    tool_call_id: str


ChatMessageParam = Annotated[
    Union[
        Annotated[SystemMessage, Tag("role=system")],
        Annotated[DeveloperMessage, Tag("role=developer")],
        Annotated[UserMessage, Tag("role=user")],
        Annotated[AssistantMessage, Tag("role=assistant")],
        Annotated[ToolMessage, Tag("role=tool")],
    ],
    Discriminator(
        _tag_by("role"),
        custom_error_type="invalid_message",
        custom_error_message="Input should be a message with role 'system', 'developer', 'user', 'assistant' or 'tool'",
    ),
]


# ------------------------------------------------------------------------------------------------
# Chat request: tools, options
# ------------------------------------------------------------------------------------------------


class FunctionDefinition(_RequestModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments
    strict: bool | None = None


class ChatCompletionTool(_RequestModel):
    function: FunctionDefinition
    type: Literal["function"]


class NamedFunction(_RequestModel):
    name: str


class NamedToolChoice(_RequestModel):
    function: NamedFunction
    type: Literal["function"]


def _tool_choice_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "tool_choice=mode"
    if isinstance(value, (dict, NamedToolChoice)):
        return "tool_choice=function"
    return None


ToolChoice = Annotated[
    Union[
        Annotated[Literal["none", "auto", "required"], Tag("tool_choice=mode")],
        Annotated[NamedToolChoice, Tag("tool_choice=function")],
    ],
    Discriminator(
        _tool_choice_kind,
        custom_error_type="invalid_tool_choice",
        custom_error_message=(
            "Input should be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}'
        ),
    ),
]


class ReasoningConfig(_RequestModel):
    effort: ReasoningEffort | None = None


def _text_modality_only(value: Any) -> bool:
    """``modalities`` we can honour: text (or nothing) only."""
    return isinstance(value, (list, tuple)) and all(m == "text" for m in value)


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    # OpenAI fields we cannot honour (400); other fields we do not know are ignored. Accepted and
    # ignored on purpose, as they do not change the completion: user, metadata, store,
    # service_tier, safety_identifier, prompt_cache_key, prompt_cache_retention,
    # stream_options.include_obfuscation.
    _REFUSED: ClassVar[RefusedFields] = {
        "functions": (None, "functions is deprecated and not supported; declare them in tools"),
        "function_call": (None, "function_call is deprecated and not supported; use tool_choice"),
        "modalities": (_text_modality_only, "only the 'text' modality is supported: this model produces text only"),
        "audio": (None, "audio output is not supported: this model produces text only"),
        "web_search_options": (None, "web_search_options is not supported: this server has no web search"),
        "prediction": (None, "prediction (predicted outputs) is not supported"),
        "verbosity": (lambda v: v == "medium", "verbosity is not supported by this model; omit it or use 'medium'"),
    }

    messages: list[ChatMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str
    frequency_penalty: _Penalty = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: _MaxTokens = None
    max_tokens: _MaxTokens = None  # deprecated by OpenAI; max_completion_tokens wins
    n: int = Field(1, ge=1, le=MAX_N)
    parallel_tool_calls: bool | None = None
    presence_penalty: _Penalty = None
    reasoning_effort: ReasoningEffort | None = None
    response_format: ResponseFormat | None = None
    seed: _Seed = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: _Temperature = None
    tool_choice: ToolChoice | None = None
    tools: list[ChatCompletionTool] | None = Field(None, max_length=MAX_TOOLS)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    top_p: _TopP = None
    user: str | None = None
    # --- extensions (not in OpenAI's API) ---
    # OpenRouter/Responses-style {"effort": ...}; reasoning_effort wins when both are given.
    reasoning: ReasoningConfig | None = None
    # False: leave the reasoning out of the response (it is still generated).
    include_reasoning: bool = True
    # Sample from the k most likely tokens only; 0 or None = off.
    top_k: _TopK = None
    # Drop tokens whose probability is below min_p times the top token's; 0 or None = off.
    min_p: _MinP = None
    # Multiplicative penalty on tokens already in prompt or output (1 or None = off).
    repetition_penalty: _RepetitionPenalty = None
    # Most tokens the reasoning (analysis) may take; then the answer starts (server default if None).
    max_reasoning_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, value: Any) -> Any:
        _refuse(cls.__name__, value, cls._REFUSED)
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # 0 without logprobs is harmless (some clients always send it); more is a client bug.
        if value and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, value: list[ChatCompletionTool] | None) -> list[ChatCompletionTool] | None:
        _check_unique_names([t.function.name for t in value or ()])
        return value

    @model_validator(mode="after")
    def _tool_choice_matches_tools(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        _check_tool_choice(type(self).__name__, {t.function.name for t in self.tools or ()}, choice, named)
        return self

    def effective_reasoning_effort(self) -> ReasoningEffort:
        """reasoning_effort, else reasoning.effort, else "medium"."""
        if self.reasoning_effort is not None:
            return self.reasoning_effort
        if self.reasoning is not None and self.reasoning.effort is not None:
            return self.reasoning.effort
        return DEFAULT_REASONING_EFFORT

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens, else the deprecated max_tokens, else None (server default)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stop_sequences(self) -> list[str]:
        return _stop_list(self.stop)

    def sampled_logprobs(self) -> int | None:
        """top_logprobs (0 when unset) when logprobs is on, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None


# ------------------------------------------------------------------------------------------------
# Chat responses
# ------------------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None

    @field_validator("logprob")
    @classmethod
    def _finite_logprob(cls, value: float) -> float:
        return _clamp_logprob(value)


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)

    @field_validator("logprob")
    @classmethod
    def _finite_logprob(cls, value: float) -> float:
        return _clamp_logprob(value)


class ChoiceLogprobs(BaseModel):
    """Chat logprobs of one choice."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


ChatFinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatMessage(_OmitNone):
    """The assistant message of a non-streamed choice.

    ``content`` and ``refusal`` are required-but-nullable in OpenAI's schema, so they stay as
    ``null``; ``tool_calls`` is optional and not nullable, so it is left out when there are none.
    """

    _omit_if_none = frozenset({"tool_calls", "reasoning_content", "reasoning"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    # --- extensions (not in OpenAI's API) ---
    # The reasoning (analysis channel), vLLM/DeepSeek style; omitted when None.
    reasoning_content: str | None = None
    # The same, OpenRouter style; omitted when None. Routes choose which to fill.
    reasoning: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason


class ChatCompletion(_OmitNone):
    """A non-streamed chat completion; fields OpenAI marks optional and non-nullable are omitted."""

    _omit_if_none = frozenset({"system_fingerprint", "usage"})

    id: str
    choices: list[ChatChoice]
    created: int = Field(default_factory=_now)
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None
    usage: Usage | None = None


class ToolCallFunctionDelta(_OmitNone):
    _omit_if_none = frozenset({"name", "arguments"})

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_OmitNone):
    """A piece of a streamed tool call: id, type and name come first, arguments follow."""

    _omit_if_none = frozenset({"id", "type", "function"})

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class ChoiceDelta(_OmitNone):
    """What a chunk adds to a choice; unset (None) fields are left out of the JSON."""

    _omit_if_none = frozenset({"role", "content", "refusal", "tool_calls", "reasoning_content", "reasoning"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    # --- extensions (not in OpenAI's API) ---
    # A piece of the reasoning, vLLM/DeepSeek style.
    reasoning_content: str | None = None
    # The same, OpenRouter style.
    reasoning: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(_OmitNone):
    """A chat stream chunk. ``usage`` is nullable in OpenAI's chunk schema and stays ``null`` in
    every chunk but the usage one, as OpenAI sends it; ``system_fingerprint`` is not nullable."""

    _omit_if_none = frozenset({"system_fingerprint"})

    id: str
    choices: list[ChunkChoice]
    created: int = Field(default_factory=_now)
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: Usage | None = None

    def to_sse(self) -> str:
        """One server-sent event: ``data: {...}\\n\\n``."""
        return f"data: {self.model_dump_json()}\n\n"

"""Typed request and response models of the OpenAI API this server speaks.

Requests accept (and ignore) fields we do not know, so that clients written for OpenAI keep
working, except OpenAI features that would change the answer and that we cannot honour (JSON
mode, audio, web search, predicted outputs, legacy functions...): those are a 400 rather than
silently ignored. Every count has an upper bound, so nothing out of range reaches the engine.
Every range check is field-level so a validation error's ``loc`` names the parameter,
which :func:`validation_error_to_api_error` turns into OpenAI's ``param``. Responses mirror the
shapes of the official ``openai`` SDK (``openai.types.chat.ChatCompletion`` etc.) field by field.
Our own additions sit at the end of each model below an ``# --- extensions`` fence.

Union fields use callable discriminators whose tags contain ``=`` (``role=user``,
``content=parts``): pydantic puts such tags into error locations, and the ``=`` lets
:func:`_loc_to_param` drop them without confusing them with field names.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gptoss.engine.types import SamplingParams
from gptoss.errors import APIError, bad_request
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE

ReasoningEffort = Literal["low", "medium", "high"]
DEFAULT_REASONING_EFFORT: ReasoningEffort = "medium"
MAX_N = 8
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20  # chat
MAX_COMPLETION_LOGPROBS = 5  # legacy completions
# Upper bounds on every count a request can ask for, checked at the edge so that no value can
# overflow or exhaust something further in (the engine, the sampler, the stop matcher).
MAX_TOKENS_LIMIT = 2**31 - 1  # max_tokens / max_completion_tokens; the context check gives the real 400
MAX_MESSAGES = 2048
MAX_TOOLS = 128  # OpenAI's limit
MAX_LOGIT_BIAS = 1024  # entries; OpenAI's spec sets no bound
MAX_STOP_LENGTH = 256  # characters per stop string: the stop matcher's per-token work grows with it
MAX_ENGINE_REQUESTS = 64  # legacy completions: prompts x n
SEED_MODULUS = 2**64  # engine seeds are unsigned 64-bit; seed + choice index wraps around
# OpenAI's (and our) floor for logprobs: JSON cannot carry -inf, and the SDK expects a number.
MIN_LOGPROB = -9999.0
SSE_DONE = "data: [DONE]\n\n"

_REQUEST_CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False)


class _RequestModel(BaseModel):
    """Base of every request-side model: unknown fields are ignored, NaN/Infinity rejected."""

    model_config = _REQUEST_CONFIG


# ------------------------------------------------------------------------------------------------
# Helpers for unions and cross-field errors
# ------------------------------------------------------------------------------------------------


def _tag_by(field: str) -> Any:
    """Discriminator callable: ``"{field}={value}"`` from a dict or a model (None when absent)."""

    def tag(value: Any) -> str | None:
        raw = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{field}={raw}" if isinstance(raw, str) else None

    return tag


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


def _field_error(model: str, field: str, message: str, value: Any) -> ValidationError:
    """A ValidationError located at ``field``, for cross-field checks run in model validators."""
    return ValidationError.from_exception_data(
        model,
        [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=(field,), input=value)],
    )


def _clamp_logprob(value: float | None) -> float | None:
    if value is None:
        return None
    return value if math.isfinite(value) and value >= MIN_LOGPROB else MIN_LOGPROB


# field -> (test for the non-null values we can honour, or None for none; the 400's message)
RefusedFields = Mapping[str, tuple[Callable[[Any], bool] | None, str]]


def _refuse(model: str, raw: Any, refused: RefusedFields) -> None:
    """A 400 naming the first field of ``raw`` (a request body) that asks for what we cannot do.

    OpenAI features that would change what the caller gets are refused rather than silently
    ignored, so that a client never mistakes our answer for one that honoured them. The fields
    are read from the raw body and never become model fields (nothing downstream sees them).
    """
    if not isinstance(raw, Mapping):
        return
    for field, (honoured, message) in refused.items():
        value = raw.get(field)
        if value is not None and not (honoured is not None and honoured(value)):
            raise _field_error(model, field, message, value)


# ------------------------------------------------------------------------------------------------
# Chat request: content parts and messages
# ------------------------------------------------------------------------------------------------


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
ContentPart = Union[TextContentPart, ImageContentPart, InputAudioContentPart, FileContentPart, RefusalContentPart]
TextContent = _content(TextContentPart)  # system, developer and tool messages
UserContent = _content(UserContentPart)
AssistantContent = _content(AssistantContentPart)


def content_text(content: str | list[ContentPart] | None, *, param: str = "content") -> str | None:
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
                f"Content parts of type '{part.type}' are not supported: this model accepts text only",
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


class _PlainMessage(_RequestModel):
    """A message whose content is text only (or text parts): system, developer, user."""

    def text_content(self, param: str = "content") -> str:
        return content_text(self.content, param=param) or ""  # type: ignore[attr-defined]


class SystemMessage(_PlainMessage):
    content: TextContent
    role: Literal["system"]
    name: str | None = None


class DeveloperMessage(_PlainMessage):
    content: TextContent
    role: Literal["developer"]
    name: str | None = None


class UserMessage(_PlainMessage):
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

    def text_content(self, param: str = "content") -> str | None:
        return content_text(self.content, param=param)

    def reasoning_text(self) -> str | None:
        """The reasoning the client sent back, whichever field carries it."""
        return self.reasoning_content if self.reasoning_content is not None else self.reasoning


class ToolMessage(_RequestModel):
    content: TextContent
    role: Literal["tool"]
    tool_call_id: str

    def text_content(self, param: str = "content") -> str:
        return content_text(self.content, param=param) or ""


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


class ResponseFormat(_RequestModel):
    """Only ``text`` (the default): JSON modes are refused, since nothing here constrains the output
    to JSON and a caller relying on it would get unparsable text without being told."""

    type: Literal["text"]

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        if value in ("json_schema", "json_object"):
            raise ValueError(
                f"response_format type '{value}' is not supported: JSON output is not enforced by this server; "
                "use 'text' and ask for JSON in the prompt"
            )
        return value


class StreamOptions(_RequestModel):
    include_usage: bool | None = None


class ReasoningConfig(_RequestModel):
    effort: ReasoningEffort | None = None


# Field constraints shared by both request types.
_Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
_Temperature = Annotated[float | None, Field(ge=0.0, le=2.0)]
_TopP = Annotated[float | None, Field(gt=0.0, le=1.0)]
_Seed = Annotated[int | None, Field(ge=-(2**63), le=2**64 - 1)]
_TopK = Annotated[int | None, Field(ge=0, le=HARMONY_VOCAB_SIZE)]
_MaxTokens = Annotated[int | None, Field(ge=1, le=MAX_TOKENS_LIMIT)]
_MinP = Annotated[float | None, Field(ge=0.0, le=1.0)]
_RepetitionPenalty = Annotated[float | None, Field(gt=0.0, le=2.0)]


def _check_logit_bias(value: Any) -> Any:
    """Keys are token ids of the served vocabulary as strings (JSON keys); values in [-100, 100].

    Normalises keys. An id outside the vocabulary would reach the sampler's tensors, so it is a 400.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("must be an object mapping token ids to biases")
    if len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} entries are allowed, got {len(value)}")
    out: dict[str, float] = {}
    for key, bias in value.items():
        try:
            token_id = int(key) if not isinstance(key, (bool, float)) else None
        except (TypeError, ValueError):
            token_id = None
        if token_id is None or token_id < 0:
            raise ValueError(f"keys must be non-negative integer token ids, got {key!r}")
        if token_id >= HARMONY_VOCAB_SIZE:
            raise ValueError(f"keys must be token ids below the vocabulary size {HARMONY_VOCAB_SIZE}, got {key!r}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"bias for token {key} must be a number, got {bias!r}")
        if not -100.0 <= bias <= 100.0:
            raise ValueError(f"bias for token {key} must be between -100 and 100, got {bias!r}")
        out[str(token_id)] = float(bias)
    return out


def _check_stop(value: Any) -> Any:
    """A string or up to MAX_STOP_SEQUENCES strings, each non-empty and at most MAX_STOP_LENGTH long."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ValueError("must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(items)}")
    if not all(items):
        raise ValueError("stop sequences must be non-empty strings")
    if any(len(s) > MAX_STOP_LENGTH for s in items):
        raise ValueError(f"stop sequences must be at most {MAX_STOP_LENGTH} characters long")
    return value if isinstance(value, str) else list(items)


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# ------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------


class _SamplingRequest(_RequestModel):
    """Validators shared by chat and legacy completions requests.

    No fields here: each request declares its own, in the order of OpenAI's reference.
    """

    @field_validator("logit_bias", mode="before", check_fields=False)
    @classmethod
    def _valid_logit_bias(cls, value: Any) -> Any:
        return _check_logit_bias(value)

    @field_validator("stop", mode="before", check_fields=False)
    @classmethod
    def _valid_stop(cls, value: Any) -> Any:
        return _check_stop(value)

    @field_validator("n", mode="before", check_fields=False)
    @classmethod
    def _null_n_is_one(cls, value: Any) -> Any:
        # OpenAI's spec has n nullable (default 1); some clients send every unset field as null.
        return 1 if value is None else value


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
        names = [t.function.name for t in value or ()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"function names must be unique, repeated: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _tool_choice_matches_tools(self) -> ChatCompletionRequest:
        names = {t.function.name for t in self.tools or ()}
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise _field_error(
                type(self).__name__,
                "tool_choice",
                f"tool_choice names function '{choice.function.name}', which is not in tools",
                choice.model_dump(),
            )
        if choice == "required" and not names:
            raise _field_error(type(self).__name__, "tool_choice", "tool_choice 'required' needs tools", choice)
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

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


PromptType = Union[str, list[str], list[int], list[list[int]]]


def _is_token_id(value: Any) -> bool:
    """A token id of the served vocabulary (anything else would index past the embedding)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < HARMONY_VOCAB_SIZE


def _check_prompt(value: Any) -> Any:
    shape_error = "must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        if not value:
            raise ValueError("prompt must not be empty")
        return value
    if not isinstance(value, (list, tuple)):
        raise ValueError(shape_error)
    if not value:
        raise ValueError("prompt must not be empty")
    items = list(value)
    batch = not all(isinstance(p, int) and not isinstance(p, bool) for p in items)
    if batch and len(items) > MAX_ENGINE_REQUESTS:
        raise ValueError(f"at most {MAX_ENGINE_REQUESTS} prompts are allowed, got {len(items)}")
    if all(isinstance(p, str) for p in items):
        if not all(items):
            raise ValueError("prompt strings must not be empty")
        return items
    if all(isinstance(p, int) and not isinstance(p, bool) for p in items):
        if not all(_is_token_id(t) for t in items):
            raise ValueError(f"token ids must be integers in [0, {HARMONY_VOCAB_SIZE})")
        return items
    if all(isinstance(p, (list, tuple)) for p in items):
        if not all(p for p in items):
            raise ValueError("token id lists must not be empty")
        if not all(_is_token_id(t) for p in items for t in p):
            raise ValueError(f"token ids must be integers in [0, {HARMONY_VOCAB_SIZE})")
        return [list(p) for p in items]
    raise ValueError(shape_error)


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions (legacy): raw text in, raw text out."""

    model: str
    prompt: PromptType
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool | None = None
    frequency_penalty: _Penalty = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: _Penalty = None
    seed: _Seed = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: _Temperature = None
    top_p: _TopP = None
    user: str | None = None
    # --- extensions (not in OpenAI's API) ---
    # Sample from the k most likely tokens only; 0 or None = off.
    top_k: _TopK = None
    # Drop tokens whose probability is below min_p times the top token's; 0 or None = off.
    min_p: _MinP = None
    # Multiplicative penalty on tokens already in prompt or output (1 or None = off).
    repetition_penalty: _RepetitionPenalty = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _valid_prompt(cls, value: Any) -> Any:
        return _check_prompt(value)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        # Insertion (fill-in-the-middle) is not something gpt-oss was trained for.
        if value:
            raise ValueError("suffix is not supported")
        return None

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        # best_of > n would mean generating and ranking extra sequences, which we do not do.
        if self.best_of is not None and self.best_of != self.n:
            raise _field_error(
                type(self).__name__,
                "best_of",
                f"best_of must be omitted or equal to n ({self.n}); got {self.best_of}",
                self.best_of,
            )
        return self

    @model_validator(mode="after")
    def _bounded_engine_requests(self) -> CompletionRequest:
        # Each prompt is generated n times, each one an engine request of its own.
        prompts = len(self.prompts())
        if prompts * self.n > MAX_ENGINE_REQUESTS:
            raise _field_error(
                type(self).__name__,
                "n",
                f"n x the number of prompts must be at most {MAX_ENGINE_REQUESTS}; "
                f"got n={self.n} for {prompts} prompts",
                self.n,
            )
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a batch: each item is a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(t, int) for t in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def stop_sequences(self) -> list[str]:
        return _stop_list(self.stop)

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


def to_sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    max_tokens: int,
    stop_token_ids: tuple[int, ...] = (),
    seed_offset: int = 0,
) -> SamplingParams:
    """Engine settings for one choice; ``seed_offset`` (the choice index) keeps n choices distinct.

    The seed wraps modulo 2**64 so that seed + index can never leave the engine's unsigned
    64-bit range (and negative seeds land in it too).
    """
    if isinstance(req, ChatCompletionRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        seed=None if req.seed is None else (req.seed + seed_offset) % SEED_MODULUS,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
        logprobs=logprobs,
        stop_token_ids=tuple(stop_token_ids),
    )


# ------------------------------------------------------------------------------------------------
# Validation errors -> OpenAI errors
# ------------------------------------------------------------------------------------------------

_MSG_PREFIXES = ("Value error, ", "Assertion failed, ")


def _loc_to_param(loc: tuple[int | str, ...]) -> str | None:
    """``("messages", 0, "role=user", "content")`` -> ``"messages[0].content"``.

    Union tags are dropped: ours contain ``=``; pydantic's own (``list[int]``, ``[key]``) ``[``.
    """
    out = ""
    for element in loc:
        if isinstance(element, int):
            out += f"[{element}]"
        elif "=" in element or "[" in element:
            continue
        else:
            out += f".{element}" if out else element
    return out or None


def validation_error_to_api_error(exc: ValidationError | RequestValidationError) -> APIError:
    """A 400 describing the first validation error, with ``param`` naming where it is."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("Invalid request body")
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error") or msg
        where = f" (at char {loc[0]})" if loc and isinstance(loc[0], int) else ""
        return bad_request(f"Invalid JSON body: {detail}{where}")
    for prefix in _MSG_PREFIXES:
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    param = _loc_to_param(loc)
    code = None if err.get("type") == "missing" else "invalid_value"
    if param is None:
        message = "Request body is required" if code is None else f"Invalid request body: {msg}"
    elif msg.startswith(f"{param} "):
        message = msg
    else:
        message = f"{param}: {msg}"
    return bad_request(message, param=param, code=code)


_Request = TypeVar("_Request", bound=BaseModel)


def parse_request(cls: type[_Request], body: bytes | str | Mapping[str, Any]) -> _Request:
    """Decode and validate a request body, raising :class:`APIError` (400) on any problem."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"Invalid JSON body: {exc}") from None
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc) from None


# ------------------------------------------------------------------------------------------------
# Responses
# ------------------------------------------------------------------------------------------------


class _OmitNone(BaseModel):
    """Serialises without the fields in ``_omit_if_none`` whose value is None (OpenAI omits them)."""

    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    # No return annotation on purpose: pydantic then keeps the model's own serialisation schema.
    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict):
            for key in self._omit_if_none:
                if key in data and data[key] is None:
                    del data[key]
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None

    @field_validator("logprob")
    @classmethod
    def _finite_logprob(cls, value: float) -> float:
        return _clamp_logprob(value)  # type: ignore[return-value]


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)

    @field_validator("logprob")
    @classmethod
    def _finite_logprob(cls, value: float) -> float:
        return _clamp_logprob(value)  # type: ignore[return-value]


class ChoiceLogprobs(BaseModel):
    """Chat logprobs of one choice."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: first echoed prompt token
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    @field_validator("token_logprobs")
    @classmethod
    def _clamp_all(cls, value: list[float | None]) -> list[float | None]:
        return [_clamp_logprob(v) for v in value]

    @field_validator("top_logprobs")
    @classmethod
    def _clamp_tops(cls, value: list[dict[str, float] | None]) -> list[dict[str, float] | None]:
        return [None if d is None else {k: _clamp_logprob(v) for k, v in d.items()} for d in value]


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(_OmitNone):
    """Token counts; the details objects are left out when unknown (OpenAI's schema: not nullable)."""

    _omit_if_none = frozenset({"completion_tokens_details", "prompt_tokens_details"})

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def build(
        cls,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        reasoning_tokens: int | None = None,
        cached_tokens: int | None = None,
    ) -> Usage:
        """Usage with total_tokens computed and details filled when known."""
        details = None if reasoning_tokens is None else CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
        cached = None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            completion_tokens_details=details,
            prompt_tokens_details=cached,
        )


ChatFinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
CompletionFinishReason = Literal["stop", "length", "content_filter"]


def _now() -> int:
    return int(time.time())


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


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: CompletionFinishReason | None = None  # None only in stream chunks


class Completion(_OmitNone):
    """Legacy completion; streamed chunks have the same shape (as OpenAI's do).

    ``usage`` and ``system_fingerprint`` are optional and not nullable in OpenAI's schema, so
    they are left out when None (every chunk but the usage one).
    """

    _omit_if_none = frozenset({"system_fingerprint", "usage"})

    id: str
    choices: list[CompletionChoice]
    created: int = Field(default_factory=_now)
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: Usage | None = None

    def to_sse(self) -> str:
        """One server-sent event: ``data: {...}\\n\\n``."""
        return f"data: {self.model_dump_json()}\n\n"


class ModelCard(_OmitNone):
    _omit_if_none = frozenset({"max_model_len"})

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str
    # --- extensions (not in OpenAI's API) ---
    # Context window in tokens (prompt + completion).
    max_model_len: int | None = None
    # True when the server runs a random-weight test model: output is meaningless.
    random_weights: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of every error response (see errors.error_body); here for the OpenAPI schema."""

    error: ErrorDetail

    @classmethod
    def from_api_error(cls, err: APIError) -> ErrorResponse:
        return cls.model_validate(err.body())

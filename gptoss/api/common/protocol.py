"""What the request and response models of every endpoint share (OpenAI's API as this server speaks it).

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

Each endpoint's own models live next to its handlers: :mod:`gptoss.api.chat.protocol`,
:mod:`gptoss.api.completions.protocol`.
"""

from __future__ import annotations

import json
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gptoss.engine.types import SamplingParams
from gptoss.errors import APIError, bad_request
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE

MAX_N = 8
MAX_STOP_SEQUENCES = 4
# Upper bounds on every count a request can ask for, checked at the edge so that no value can
# overflow or exhaust something further in (the engine, the sampler, the stop matcher).
MAX_TOKENS_LIMIT = 2**31 - 1  # max_tokens / max_completion_tokens; the context check gives the real 400
MAX_LOGIT_BIAS = 1024  # entries; OpenAI's spec sets no bound
MAX_STOP_LENGTH = 256  # characters per stop string: the stop matcher's per-token work grows with it
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


def _check_unique_names(names: list[str]) -> None:
    """Tools are called by name: two tools of one name would make a call ambiguous."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"function names must be unique, repeated: {', '.join(repeated)}")


def _check_tool_choice(model: str, names: set[str], choice: Any, named: str | None) -> None:
    """A named ``tool_choice`` (``named``) must be one of the tools; ``required`` needs tools."""
    if named is not None and named not in names:
        raise _field_error(
            model, "tool_choice", f"tool_choice names function '{named}', which is not in tools", choice.model_dump()
        )
    if choice == "required" and not names:
        raise _field_error(model, "tool_choice", "tool_choice 'required' needs tools", choice)


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


class JSONSchemaFormat(_RequestModel):
    """``response_format.json_schema``: the schema the answer must validate against."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_RequestModel):
    """``text`` (free), ``json_object`` (any JSON object) or ``json_schema``; both JSON modes are
    enforced token by token in the answer (the ``final`` channel), never in the reasoning."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a json_schema object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with response_format type 'json_schema', not '{self.type}'")
        return self

    @property
    def is_json(self) -> bool:
        """The answer must be JSON: a grammar constrains it."""
        return self.type != "text"


# ------------------------------------------------------------------------------------------------
# Shared request fields and validators
# ------------------------------------------------------------------------------------------------


class StreamOptions(_RequestModel):
    include_usage: bool | None = None


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

    @abstractmethod
    def sampled_logprobs(self) -> int | None:
        """Alternatives per token the engine returns logprobs for (None: no logprobs); per endpoint."""


def to_sampling_params(
    req: _SamplingRequest,
    *,
    max_tokens: int,
    stop_token_ids: tuple[int, ...] = (),
    seed_offset: int = 0,
    grammar: str | None = None,
) -> SamplingParams:
    """Engine settings for one choice; ``seed_offset`` (the choice index) keeps n choices distinct.

    The seed wraps modulo 2**64 so that seed + index can never leave the engine's unsigned
    64-bit range (and negative seeds land in it too).
    """
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
        logprobs=req.sampled_logprobs(),
        stop_token_ids=tuple(stop_token_ids),
        grammar=grammar,
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


def _now() -> int:
    return int(time.time())


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


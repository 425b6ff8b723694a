"""Request and response models of ``POST /v1/completions`` (legacy: raw text in, raw text out).

What they share with the other endpoints, and the conventions they follow, is in
:mod:`gptoss.api.common.protocol`.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from gptoss.api.common.protocol import (
    MAX_N,
    MAX_TOKENS_LIMIT,
    ResponseFormat,
    StreamOptions,
    Usage,
    _clamp_logprob,
    _field_error,
    _MinP,
    _now,
    _OmitNone,
    _Penalty,
    _RepetitionPenalty,
    _SamplingRequest,
    _Seed,
    _stop_list,
    _Temperature,
    _TopK,
    _TopP,
)
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE

MAX_COMPLETION_LOGPROBS = 5
MAX_ENGINE_REQUESTS = 64  # prompts x n

# ------------------------------------------------------------------------------------------------
# Completion request
# ------------------------------------------------------------------------------------------------


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
    # The completion is one JSON document (json_object / json_schema), enforced token by token.
    response_format: ResponseFormat | None = None

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
            return [list(p)]
        return list(p)

    def stop_sequences(self) -> list[str]:
        return _stop_list(self.stop)

    def sampled_logprobs(self) -> int | None:
        """logprobs: alternatives per token (0: the sampled token's only), None: off."""
        return self.logprobs


# ------------------------------------------------------------------------------------------------
# Completion responses
# ------------------------------------------------------------------------------------------------


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


CompletionFinishReason = Literal["stop", "length", "content_filter"]


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

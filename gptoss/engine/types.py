"""The engine's narrow interface: what a request is, what comes back, what can go wrong.

Kept free of torch so that protocol and route code (and their tests) import it cheaply.
Routes submit a :class:`GenerationRequest` and iterate the :class:`RequestStream` of
:class:`TokenEvent`; closing or cancelling the stream frees the sequence within one step.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]

# KV-cache budget (tokens) on CPU when none is configured; bf16 KV of gpt-oss-20b at this size is
# ~12 GiB of RAM. On GPU the engine sizes it from the memory left free after loading.
DEFAULT_CPU_KV_TOKENS = 262_144


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings; every sequence in a batch has its own."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] | None = None
    logprobs: int | None = None  # None = off; k = chosen token's logprob plus the top k alternatives
    stop_token_ids: tuple[int, ...] = ()  # the sequence ends after one of these (it is reported)
    # llguidance grammar (Lark syntax) every generated token must follow, from the first one;
    # None = unconstrained. Built by the API layer (gptoss.harmony.grammar).
    grammar: str | None = None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Label for metrics/logs (the API key's name); never the key itself.
    key_name: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. The last event of a stream has ``finish_reason`` set."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: FinishReason | None = None


class RequestStream(Protocol):
    """Async stream of one request's tokens."""

    request_id: str

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    def ready_events(self) -> list[TokenEvent]:
        """Events already delivered, taken without waiting."""

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next engine step."""


class EngineProtocol(Protocol):
    """What routes need from an engine; the real one and the test fake both provide it."""

    @property
    def max_context(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    def submit(self, request: GenerationRequest) -> RequestStream: ...


class EngineError(Exception):
    """Base for errors the routes turn into OpenAI-shaped responses."""


class EngineOverloaded(EngineError):
    """The queue is full: answer 429 with Retry-After."""


class EngineShuttingDown(EngineError):
    """The server is draining for shutdown: answer 503."""


class EngineNotReady(EngineError):
    """The model is still loading (or failed to load): answer 503."""


class SequenceFailed(EngineError):
    """One sequence failed on its own (its sampler state, bias, seed, prompt); the batch went on."""


class EngineFault(EngineError):
    """A model step failed; every sequence that was part of it ends with this error."""

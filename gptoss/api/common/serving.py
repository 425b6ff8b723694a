"""What the chat and completions handlers share, between the thin routes and the engine.

The :class:`Backend` the routes run on, the caller's token budget (:class:`Admission`), token
timings for the metrics, the context-length check, and the plumbing of a job's streams: event
batches, merging the ``n`` choices as they come, errors inside a stream, and the job base
(cancel, token usage, settling the budget). The endpoints are in :mod:`gptoss.api.chat.serving`
and :mod:`gptoss.api.completions.serving`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gptoss.api.errors import api_error_from
from gptoss.engine.types import EngineProtocol, RequestStream, TokenEvent
from gptoss.errors import APIError, bad_request
from gptoss.harmony.grammar import GrammarError, check_grammar
from gptoss.settings import Settings
from gptoss.state import ResponseStore

logger = logging.getLogger(__name__)


class TokenObserver(Protocol):
    """Receives token timings (the metrics); serving behaves the same without one."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...


class TokenClock:
    """Times one choice's tokens for an optional observer: TTFT from submission, then the gaps.

    Timestamps are taken when the route receives each token event, i.e. what a client sees.
    """

    __slots__ = ("observer", "started_at", "last_at")

    def __init__(self, observer: TokenObserver | None) -> None:
        self.observer = observer
        self.started_at = time.monotonic()
        self.last_at: float | None = None

    def tick(self) -> None:
        if self.observer is None:
            return
        now = time.monotonic()
        if self.last_at is None:
            self.observer.first_token(now - self.started_at)
        else:
            self.observer.inter_token(now - self.last_at)
        self.last_at = now


class Admission(Protocol):
    """The caller's token budget (its key's tpm), held for a request from admission to its end."""

    def limit(self) -> int | None:
        """The most tokens one request may use (None: no limit)."""

    def reserve(self, tokens: int) -> Any:
        """Hold ``tokens``; the returned hold's ``settle(used)`` gives back the rest. Raises a 429 APIError."""


class _Unlimited:
    def limit(self) -> int | None:
        return None

    def reserve(self, tokens: int) -> Any:
        return NoHold()


class NoHold:
    def settle(self, used_tokens: int) -> None:
        pass


UNLIMITED: Admission = _Unlimited()


@dataclass
class Backend:
    """What the routes need at run time; attached to the FastAPI app by the service."""

    engine: EngineProtocol
    encoding: Any  # openai_harmony.HarmonyEncoding
    settings: Settings
    random_weights: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    observer: TokenObserver | None = None  # token timings for the metrics
    # Stored Responses API responses (gptoss.state); the service opens it at start, closes it at shutdown.
    store: ResponseStore | None = None


# --------------------------------------------------------------------------------------------------
# shared helpers


#: Conversations with at least this many characters are counted before they are rendered.
LARGE_INPUT_CHARS = 64 * 1024
#: Large inputs are tokenised one at a time: the others wait, and a core stays free for the
#: event loop and the engine (bounded work per request).
LARGE_INPUTS = asyncio.Semaphore(1)


def sse_error(exc: BaseException) -> str:
    """An error that happens after a stream's headers went out, as an SSE event in OpenAI's shape."""
    return f"data: {json.dumps(api_error_from(exc).body())}\n\n"


def check_model(backend: Backend, model: str | None) -> None:
    if model != backend.settings.served_model_name:
        raise APIError(
            404,
            f"The model '{model}' does not exist. This server serves '{backend.settings.served_model_name}'.",
            param="model",
            code="model_not_found",
        )


def resolve_max_tokens(backend: Backend, prompt_len: int, requested: int | None) -> int:
    """Tokens the completion may use: the request's (checked) or the default, within the context."""
    ctx = backend.engine.max_context
    if prompt_len >= ctx:
        raise APIError(
            400,
            f"This model's maximum context length is {ctx} tokens. However, your prompt is {prompt_len} tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    room = ctx - prompt_len
    if requested is not None:
        if requested > room:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the completion).",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested
    return min(backend.settings.default_max_tokens, room)


async def event_batches(stream: RequestStream) -> AsyncIterator[list[TokenEvent]]:
    """The stream's events, grouped: each wait returns every event already delivered.

    A consumer that keeps up gets one token per group (one chunk per token, as OpenAI streams);
    one that fell behind under load folds the backlog into one chunk instead of paying the
    per-chunk cost (JSON, SSE, ASGI send) for every token.
    """
    async for ev in stream:
        yield [ev, *stream.ready_events()]


async def merge_streams(gens: Sequence[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Interleave several async iterators as items arrive (n > 1 choices)."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield item
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump(gen: AsyncIterator[Any]) -> None:
        try:
            async for item in gen:
                await queue.put(item)
        except BaseException as exc:  # re-raised in the consumer
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(g)) for g in gens]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


class Job:
    """What chat and completion jobs share: their choices' streams and token counts."""

    runs: Sequence[Any]
    prompt_tokens: int
    hold: Any  # the caller's token reservation (Admission.reserve)

    def cancel(self) -> None:
        for r in self.runs:
            r.stream.cancel()

    def settle(self) -> None:
        """Give back the tokens held for this request that it did not use."""
        self.hold.settle(self.token_usage()["total_tokens"])

    def token_usage(self) -> dict[str, Any]:
        completion = sum(r.completion_tokens for r in self.runs)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def enforceable(grammar: str, param: str) -> str:
    """``grammar``, or a 400 naming ``param`` when the grammar library cannot enforce it (e.g. a
    JSON Schema keyword it lacks): a schema we cannot hold the answer to is refused, not ignored."""
    try:
        check_grammar(grammar)
    except GrammarError as exc:
        if exc.keyword:
            message = (
                f"{param} uses the JSON Schema keyword '{exc.keyword}', which structured output does not "
                "support; remove it or describe the constraint in the prompt"
            )
        else:
            message = f"{param} cannot be enforced: {exc}"
        raise bad_request(message, param=param, code="invalid_json_schema") from exc
    return grammar

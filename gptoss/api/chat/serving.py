"""Request handling between the thin routes and the engine: one code path for stream and not.

A chat request is rendered to Harmony tokens, submitted as ``n`` engine requests, and each
choice's token events go through the same :class:`ChoiceRun` (Harmony parser, stop strings,
logprobs, usage). Streaming turns its pieces into SSE chunks as they come; non-streaming
drains exactly the same pieces into one response, so both give the same answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gptoss.api.chat.protocol import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    to_sampling_params,
)
from gptoss.api.errors import api_error_from
from gptoss.engine.types import EngineProtocol, GenerationRequest, RequestStream, TokenEvent
from gptoss.errors import APIError, bad_request
from gptoss.harmony.parse import (
    ChatStreamParser,
    IncrementalDecoder,
    StopMatcher,
    render_chat,
    token_bytes,
    token_text,
)
from gptoss.harmony.vocab import ENDOFTEXT_TOKEN, text_encoding
from gptoss.settings import Settings

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
        return _NoHold()


class _NoHold:
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


# --------------------------------------------------------------------------------------------------
# shared helpers


#: Conversations with at least this many characters are counted before they are rendered.
LARGE_INPUT_CHARS = 64 * 1024
#: Large inputs are tokenised one at a time: the others wait, and a core stays free for the
#: event loop and the engine (bounded work per request).
_LARGE_INPUTS = asyncio.Semaphore(1)


def _strings(value: Any) -> list[str]:
    """Every string inside a dumped message (content, parts, tool-call arguments, reasoning)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


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


def _logprob_entry(token_id: int, logprob: float, top: Sequence[tuple[int, float]] | None) -> dict[str, Any]:
    return {
        "token": token_text(token_id),
        "logprob": logprob,
        "bytes": list(token_bytes(token_id)),
        "top_logprobs": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_bytes(t))} for t, lp in (top or ())
        ],
    }


async def event_batches(stream: RequestStream) -> AsyncIterator[list[TokenEvent]]:
    """The stream's events, grouped: each wait returns every event already delivered.

    A consumer that keeps up gets one token per group (one chunk per token, as OpenAI streams);
    one that fell behind under load folds the backlog into one chunk instead of paying the
    per-chunk cost (JSON, SSE, ASGI send) for every token.
    """
    async for ev in stream:
        yield [ev, *stream.ready_events()]


async def _merge(gens: Sequence[AsyncIterator[Any]]) -> AsyncIterator[Any]:
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


# --------------------------------------------------------------------------------------------------
# chat


@dataclass
class ChatPiece:
    """What one step of one choice adds: a delta dict (OpenAI shape) and optional logprobs."""

    index: int
    delta: dict[str, Any]
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class ChoiceRun:
    """Turns one engine stream into chat deltas: Harmony parsing, stop strings, logprobs."""

    def __init__(
        self,
        index: int,
        stream: RequestStream,
        parser: ChatStreamParser,
        stops: list[str],
        *,
        want_logprobs: bool,
        reasoning_keys: tuple[str, ...],
        observer: TokenObserver | None = None,
    ) -> None:
        self.index = index
        self.stream = stream
        self.clock = TokenClock(observer)
        self.parser = parser
        self.stop = StopMatcher(stops)
        self.want_logprobs = want_logprobs
        self.reasoning_keys = reasoning_keys
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self._events: list[TokenEvent] = []

    def _delta_for(self, deltas: list[Any]) -> tuple[dict[str, Any], list[int], bool]:
        """Fold parser deltas into one OpenAI delta; returns (delta, content token indices, stop hit)."""
        out: dict[str, Any] = {}
        content_tokens: list[int] = []
        hit = False
        for d in deltas:
            if d.kind == "reasoning":
                for key in self.reasoning_keys:
                    out[key] = out.get(key, "") + d.text
            elif d.kind == "content":
                if hit:
                    continue
                text, hit = self.stop.push(d.text)
                if text:
                    out["content"] = out.get("content", "") + text
                    if d.token_index is not None:
                        content_tokens.append(d.token_index)
            elif d.kind == "tool_call_start":
                calls = out.setdefault("tool_calls", [])
                calls.append(
                    {
                        "index": d.tool_index,
                        "id": d.tool_id,
                        "type": "function",
                        "function": {"name": d.tool_name, "arguments": ""},
                    }
                )
            elif d.kind == "tool_call_args":
                calls = out.setdefault("tool_calls", [])
                if calls and calls[-1]["index"] == d.tool_index:
                    calls[-1]["function"]["arguments"] += d.text
                else:
                    calls.append({"index": d.tool_index, "function": {"arguments": d.text}})
        return out, content_tokens, hit

    async def pieces(self) -> AsyncIterator[ChatPiece]:
        engine_finish: str | None = None
        try:
            async for events in event_batches(self.stream):
                deltas: list[Any] = []
                for ev in events:
                    if ev.token_id >= 0:
                        self.clock.tick()
                        if self.first_token_at is None:
                            self.first_token_at = time.monotonic()
                        self.completion_tokens += 1
                        self._events.append(ev)
                        deltas += self.parser.feed(ev.token_id)
                    if ev.finish_reason is not None:
                        engine_finish = ev.finish_reason
                        deltas += self.parser.finish(ev.finish_reason)
                delta, content_tokens, hit = self._delta_for(deltas)
                if hit:
                    self.stream.cancel()
                    self.finish_reason = "stop"
                    if delta:
                        yield ChatPiece(self.index, delta, self._logprobs(content_tokens))
                    return
                if engine_finish is not None:
                    tail = self.stop.flush()
                    if tail:
                        delta["content"] = delta.get("content", "") + tail
                    if engine_finish == "abort":
                        raise APIError(503, "The request was aborted (timeout or shutdown).", code="request_aborted")
                    self.finish_reason = self.parser.finish_reason
                if delta:
                    yield ChatPiece(self.index, delta, self._logprobs(content_tokens))
        finally:
            self.stream.cancel()

    def _logprobs(self, token_indices: list[int]) -> list[dict[str, Any]] | None:
        if not self.want_logprobs:
            return None
        entries = []
        for i in token_indices:
            ev = self._events[i] if i < len(self._events) else None
            if ev is not None and ev.logprob is not None:
                entries.append(_logprob_entry(ev.token_id, ev.logprob, ev.top_logprobs))
        return entries


class ChatHandler:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _reasoning_keys(self, req: ChatCompletionRequest) -> tuple[str, ...]:
        if req.include_reasoning is False:
            return ()
        mode = self.backend.settings.reasoning_field
        return ("reasoning_content", "reasoning") if mode == "both" else (mode,)

    def _render(self, req: ChatCompletionRequest) -> Any:
        dumped = req.model_dump(exclude_none=True)
        return render_chat(
            dumped["messages"],
            encoding=self.backend.encoding,
            tools=dumped.get("tools"),
            tool_choice=dumped.get("tool_choice"),
            reasoning_effort=req.effective_reasoning_effort(),
        )

    async def _refuse_oversized(self, req: ChatCompletionRequest) -> None:
        """A 400 for a conversation whose text alone cannot fit the context, before rendering it.

        Harmony's renderer holds the GIL while it tokenises (tens of ms per MB), which would
        stall every other request; counting the text with tiktoken does not. The count is a
        lower bound of the rendered prompt (which adds the Harmony framing).
        """
        texts = [t for m in req.messages for t in _strings(m.model_dump(exclude_none=True))]
        if sum(len(t) for t in texts) < LARGE_INPUT_CHARS:
            return
        enc = text_encoding()
        async with _LARGE_INPUTS:
            counted = await asyncio.to_thread(lambda: sum(len(enc.encode(t, allowed_special="all")) for t in texts))
        ctx = self.backend.engine.max_context
        if counted >= ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, your messages are at least "
                f"{counted} tokens.",
                param="messages",
                code="context_length_exceeded",
            )

    async def start(
        self, req: ChatCompletionRequest, key_name: str | None = None, admission: Admission = UNLIMITED
    ) -> ChatJob:
        b = self.backend  # the route has checked the model (before the key's model access)
        await self._refuse_oversized(req)
        # Rendering and tokenising a conversation takes a while: off the event loop.
        rendered = await asyncio.to_thread(self._render, req)
        prompt = rendered.prompt_ids
        max_tokens = resolve_max_tokens(b, len(prompt), req.requested_max_tokens())
        choices = req.n or 1
        limit = admission.limit()
        if limit is not None and req.requested_max_tokens() is None:  # the default fits the key's budget
            max_tokens = max(1, min(max_tokens, (limit - len(prompt)) // choices))
        hold = admission.reserve(len(prompt) + max_tokens * choices)
        runs = []
        streams = []
        try:
            for i in range(req.n or 1):
                params = to_sampling_params(
                    req, max_tokens=max_tokens, stop_token_ids=rendered.stop_token_ids, seed_offset=i
                )
                stream = b.engine.submit(GenerationRequest(list(prompt), params, key_name=key_name))
                streams.append(stream)
                runs.append(
                    ChoiceRun(
                        i,
                        stream,
                        ChatStreamParser(b.encoding, prefill_ids=rendered.prefill_ids),
                        req.stop_sequences(),
                        want_logprobs=bool(req.logprobs),
                        reasoning_keys=self._reasoning_keys(req),
                        observer=b.observer,
                    )
                )
        except BaseException:
            for s in streams:
                s.cancel()
            hold.settle(0)
            raise
        return ChatJob(req, runs, len(prompt), b.settings.served_model_name, hold)


class _Job:
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


@dataclass
class ChatJob(_Job):
    request: ChatCompletionRequest
    runs: list[ChoiceRun]
    prompt_tokens: int
    model: str
    hold: Any = field(default_factory=_NoHold)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict[str, Any]:
        reasoning = sum(r.parser.reasoning_token_count for r in self.runs)
        return {**self.token_usage(), "completion_tokens_details": {"reasoning_tokens": reasoning}}

    async def response(self) -> ChatCompletion:
        """Drain every choice (the same pieces the stream would send) into one response."""
        acc: dict[int, dict[str, Any]] = {r.index: {"tool_calls": {}} for r in self.runs}
        logprobs: dict[int, list[dict[str, Any]]] = {r.index: [] for r in self.runs}
        async for piece in _merge([r.pieces() for r in self.runs]):
            a = acc[piece.index]
            for key, val in piece.delta.items():
                if key == "tool_calls":
                    for call in val:
                        slot = a["tool_calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                        slot["id"] = call.get("id") or slot["id"]
                        fn = call.get("function", {})
                        slot["name"] = fn.get("name") or slot["name"]
                        slot["arguments"] += fn.get("arguments", "")
                else:
                    a[key] = a.get(key, "") + val
            if piece.logprobs:
                logprobs[piece.index].extend(piece.logprobs)
        choices = []
        for r in self.runs:
            a = acc[r.index]
            calls = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for _, c in sorted(a.pop("tool_calls").items())
            ]
            message: dict[str, Any] = {"role": "assistant", "content": a.pop("content", None)}
            if calls:
                message["tool_calls"] = calls
            message.update(a)  # reasoning fields, as configured
            choices.append(
                {
                    "index": r.index,
                    "message": message,
                    "logprobs": {"content": logprobs[r.index]} if self.request.logprobs else None,
                    "finish_reason": r.finish_reason or "stop",
                }
            )
        return ChatCompletion.model_validate(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self.usage(),
            }
        )

    def pieces(self) -> AsyncIterator[ChatPiece]:
        """Every choice's pieces, as they come."""
        return _merge([r.pieces() for r in self.runs])

    async def sse(self) -> AsyncIterator[str]:
        """SSE lines: a role chunk per choice, deltas as generated, finish chunks, usage, [DONE]."""
        include_usage = bool(self.request.stream_options and self.request.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            return ChatCompletionChunk.model_validate(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": choices,
                    "usage": usage,
                }
            ).to_sse()

        try:
            for r in self.runs:
                yield chunk([{"index": r.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            async for piece in _merge([r.pieces() for r in self.runs]):
                choice: dict[str, Any] = {"index": piece.index, "delta": piece.delta, "finish_reason": None}
                if piece.logprobs is not None:
                    choice["logprobs"] = {"content": piece.logprobs}
                yield chunk([choice])
            for r in self.runs:
                yield chunk([{"index": r.index, "delta": {}, "finish_reason": r.finish_reason or "stop"}])
            if include_usage:
                yield chunk([], self.usage())
        except Exception as exc:  # headers are sent: the error goes in the stream, then [DONE]
            yield sse_error(exc)
        finally:
            self.cancel()
        yield SSE_DONE


# --------------------------------------------------------------------------------------------------
# legacy completions


class CompletionRun:
    """One choice of a raw-text completion: incremental detokenization and stop strings."""

    def __init__(
        self,
        index: int,
        stream: RequestStream,
        encoding: Any,
        stops: list[str],
        logprobs: int | None,
        observer: TokenObserver | None = None,
    ) -> None:
        self.index = index
        self.stream = stream
        self.clock = TokenClock(observer)
        self.decoder = IncrementalDecoder(encoding)
        self.stop = StopMatcher(stops)
        self.logprobs = logprobs
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.text_offset = 0

    async def pieces(self) -> AsyncIterator[tuple[int, str, dict[str, Any] | None, str | None]]:
        """Yields (index, text, legacy logprobs for this piece, finish_reason)."""
        try:
            async for events in event_batches(self.stream):
                lp: dict[str, list[Any]] | None = None
                text = ""
                finish: str | None = None
                for ev in events:
                    if ev.token_id >= 0:
                        self.clock.tick()
                        self.completion_tokens += 1
                        piece = self.decoder.push(ev.token_id)
                        if self.logprobs is not None and ev.logprob is not None:
                            lp = lp or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                            lp["tokens"].append(token_text(ev.token_id))
                            lp["token_logprobs"].append(ev.logprob)
                            lp["top_logprobs"].append({token_text(t): v for t, v in (ev.top_logprobs or ())})
                            lp["text_offset"].append(self.text_offset + len(text))
                        text += piece
                    if ev.finish_reason is not None:
                        finish = ev.finish_reason
                        text += self.decoder.flush()
                out, hit = self.stop.push(text)
                if hit:
                    self.stream.cancel()
                    self.finish_reason = "stop"
                    yield self.index, out, lp, "stop"
                    return
                if finish is not None:
                    if finish == "abort":
                        raise APIError(503, "The request was aborted (timeout or shutdown).", code="request_aborted")
                    out += self.stop.flush()
                    self.finish_reason = finish
                self.text_offset += len(out)
                if out or lp or finish:
                    yield self.index, out, lp, self.finish_reason
        finally:
            self.stream.cancel()


class CompletionHandler:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Raw text ends where the model would end a message or the document.
        self._stop_tokens = (*backend.encoding.stop_tokens(), ENDOFTEXT_TOKEN)

    def _prompts(self, req: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt (text is encoded as raw text, special tokens allowed)."""
        enc = text_encoding()  # the same ids as the Harmony encoder, without holding the GIL
        out = [
            enc.encode(item, allowed_special="all") if isinstance(item, str) else list(item) for item in req.prompts()
        ]
        if any(not ids for ids in out):
            raise bad_request("prompt must not be empty", param="prompt")
        return out

    async def start(
        self, req: CompletionRequest, key_name: str | None = None, admission: Admission = UNLIMITED
    ) -> CompletionJob:
        b = self.backend  # the route has checked the model (before the key's model access)
        if sum(len(p) for p in req.prompts() if isinstance(p, str)) >= LARGE_INPUT_CHARS:
            async with _LARGE_INPUTS:
                prompts = await asyncio.to_thread(self._prompts, req)
        else:
            prompts = await asyncio.to_thread(self._prompts, req)  # tokenising: off the loop
        runs: list[CompletionRun] = []
        echoes: list[str] = []
        budgets = [resolve_max_tokens(b, len(prompt), req.max_tokens) for prompt in prompts]
        prompt_tokens = sum(len(prompt) for prompt in prompts)
        hold = admission.reserve(prompt_tokens + sum(budgets) * (req.n or 1))
        try:
            for prompt, max_tokens in zip(prompts, budgets):
                for j in range(req.n or 1):
                    params = to_sampling_params(
                        req, max_tokens=max_tokens, stop_token_ids=self._stop_tokens, seed_offset=j
                    )
                    stream = b.engine.submit(GenerationRequest(list(prompt), params, key_name=key_name))
                    runs.append(
                        CompletionRun(len(runs), stream, b.encoding, req.stop_sequences(), req.logprobs, b.observer)
                    )
                    echoes.append(b.encoding.decode(prompt) if req.echo else "")
        except BaseException:
            for r in runs:
                r.stream.cancel()
            hold.settle(0)
            raise
        return CompletionJob(req, runs, echoes, prompt_tokens, b.settings.served_model_name, hold)


@dataclass
class CompletionJob(_Job):
    request: CompletionRequest
    runs: list[CompletionRun]
    echoes: list[str]
    prompt_tokens: int
    model: str
    hold: Any = field(default_factory=_NoHold)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict[str, Any]:
        return self.token_usage()

    def _envelope(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    async def response(self) -> Completion:
        texts = {r.index: self.echoes[r.index] for r in self.runs}
        lps: dict[int, dict[str, list[Any]]] = {
            r.index: {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for r in self.runs
        }
        async for index, text, lp, _ in _merge([r.pieces() for r in self.runs]):
            texts[index] += text
            if lp:
                for k, v in lp.items():
                    lps[index][k].extend(v)
        choices = [
            {
                "index": r.index,
                "text": texts[r.index],
                "logprobs": lps[r.index] if self.request.logprobs is not None else None,
                "finish_reason": r.finish_reason or "stop",
            }
            for r in self.runs
        ]
        return Completion.model_validate(self._envelope(choices, self.usage()))

    async def sse(self) -> AsyncIterator[str]:
        include_usage = bool(self.request.stream_options and self.request.stream_options.include_usage)
        try:
            for r in self.runs:
                if self.echoes[r.index]:
                    c = {"index": r.index, "text": self.echoes[r.index], "logprobs": None, "finish_reason": None}
                    yield Completion.model_validate(self._envelope([c], None)).to_sse()
            async for index, text, lp, finish in _merge([r.pieces() for r in self.runs]):
                c = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
                yield Completion.model_validate(self._envelope([c], None)).to_sse()
            if include_usage:
                yield Completion.model_validate(self._envelope([], self.usage())).to_sse()
        except Exception as exc:  # headers are sent: the error goes in the stream, then [DONE]
            yield sse_error(exc)
        finally:
            self.cancel()
        yield SSE_DONE

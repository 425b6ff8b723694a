"""Chat requests between the thin routes and the engine: one code path for stream and not.

A chat request is rendered to Harmony tokens, submitted as ``n`` engine requests, and each
choice's token events go through the same :class:`ChoiceRun` (Harmony parser, stop strings,
logprobs, usage). Streaming turns its pieces into SSE chunks as they come; non-streaming
drains exactly the same pieces into one response, so both give the same answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gptoss.api.chat.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageParam,
    ToolMessage,
    content_text,
)
from gptoss.api.common.protocol import SSE_DONE, to_sampling_params
from gptoss.api.common.serving import (
    LARGE_INPUT_CHARS,
    LARGE_INPUTS,
    UNLIMITED,
    Admission,
    Backend,
    Job,
    NoHold,
    TokenClock,
    TokenObserver,
    enforceable,
    event_batches,
    merge_streams,
    resolve_max_tokens,
    sse_error,
)
from gptoss.engine.types import GenerationRequest, RequestStream, TokenEvent
from gptoss.errors import APIError, bad_request
from gptoss.harmony import (
    ChatStreamParser,
    HarmonyInputError,
    RenderedPrompt,
    StopMatcher,
    Turn,
    render_chat,
    token_bytes,
    token_text,
)
from gptoss.harmony.grammar import AnswerSpec, ToolSpec, harmony_grammar
from gptoss.harmony.vocab import text_encoding


def _strings(value: Any) -> list[str]:
    """Every string inside a dumped message (content, parts, tool-call arguments, reasoning)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _logprob_entry(token_id: int, logprob: float, top: Sequence[tuple[int, float]] | None) -> dict[str, Any]:
    return {
        "token": token_text(token_id),
        "logprob": logprob,
        "bytes": list(token_bytes(token_id)),
        "top_logprobs": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_bytes(t))} for t, lp in (top or ())
        ],
    }


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


#: The longest run of whitespace accepted in one string (Harmony's encoder is quadratic in it).
MAX_WHITESPACE_RUN = 1024
_LONG_WHITESPACE = re.compile(rf"\s{{{MAX_WHITESPACE_RUN + 1}}}")


def _check_whitespace(text: str, param: str) -> None:
    if len(text) > MAX_WHITESPACE_RUN and _LONG_WHITESPACE.search(text):
        raise bad_request(
            f"{param} holds a run of more than {MAX_WHITESPACE_RUN} whitespace characters; shorten it.",
            param=param,
            code="invalid_value",
        )


def _turn(i: int, message: ChatMessageParam) -> Turn:
    """A request message as Harmony takes it: content flattened to text (a non-text part is a 400)."""
    text = content_text(message.content, param=f"messages[{i}].content") or ""
    if isinstance(message, AssistantMessage):
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
        return Turn("assistant", text, reasoning=reasoning, tool_calls=message.tool_calls or ())
    if isinstance(message, ToolMessage):
        return Turn("tool", text, tool_call_id=message.tool_call_id)
    return Turn(message.role, text)


class ChatHandler:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _reasoning_keys(self, req: ChatCompletionRequest) -> tuple[str, ...]:
        if req.include_reasoning is False:
            return ()
        mode = self.backend.settings.reasoning_field
        return ("reasoning_content", "reasoning") if mode == "both" else (mode,)

    def _render(self, req: ChatCompletionRequest) -> RenderedPrompt:
        try:
            return self._render_unchecked(req)
        except (HarmonyInputError, APIError, ValueError, TypeError):
            raise
        except BaseException as exc:  # openai-harmony's Rust panics are BaseExceptions
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            message = f"The conversation could not be rendered ({type(exc).__name__})."
            raise HarmonyInputError(message, "messages") from exc

    def _render_unchecked(self, req: ChatCompletionRequest) -> RenderedPrompt:
        return render_chat(
            [_turn(i, m) for i, m in enumerate(req.messages)],
            encoding=self.backend.encoding,
            tools=[t.function for t in req.tools or ()],
            tool_choice=req.tool_choice,
            reasoning_effort=req.effective_reasoning_effort(),
        )

    async def _refuse_oversized(self, req: ChatCompletionRequest) -> None:
        """A 400 for input Harmony's renderer cannot take cheaply, before rendering it.

        The renderer holds the GIL while it tokenises, so whatever it spends stalls every other
        request. Its encoder is quadratic in the length of a whitespace run, so long runs are
        refused; and a conversation whose text alone cannot fit the context is counted with
        tiktoken (which releases the GIL) and refused. The count is a lower bound of the
        rendered prompt (which adds the Harmony framing).
        """
        texts: list[str] = []
        for i, m in enumerate(req.messages):
            for t in _strings(m.model_dump(exclude_none=True)):
                _check_whitespace(t, f"messages[{i}]")
                texts.append(t)
        for i, tool in enumerate(req.tools or ()):
            for t in _strings(tool.model_dump(exclude_none=True)):
                _check_whitespace(t, f"tools[{i}]")
                texts.append(t)
        if sum(len(t) for t in texts) < LARGE_INPUT_CHARS:
            return
        enc = text_encoding()
        async with LARGE_INPUTS:
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
        grammar = None
        if needs_grammar(req, b.settings.max_reasoning_tokens):  # a first schema check is slow: off the loop
            grammar = await asyncio.to_thread(chat_grammar, req, max_tokens, b.settings.max_reasoning_tokens)
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
                    req, max_tokens=max_tokens, stop_token_ids=rendered.stop_token_ids, seed_offset=i, grammar=grammar
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


def needs_grammar(req: ChatCompletionRequest, default_budget: int) -> bool:
    """JSON answers, tools (names and arguments) and a reasoning budget need a grammar."""
    fmt = req.response_format
    return (fmt is not None and fmt.is_json) or bool(req.tools) or bool(req.max_reasoning_tokens or default_budget)


def chat_grammar(req: ChatCompletionRequest, max_tokens: int, default_budget: int) -> str | None:
    """The grammar that holds this request's answer to its shape, or None when nothing constrains it.

    Where the answer is constrained and no budget is given, the reasoning may take half of
    ``max_tokens``, so that the answer always has room to be completed.
    """
    if not needs_grammar(req, default_budget):
        return None
    fmt = req.response_format
    tools = req.tools or []
    budget = req.max_reasoning_tokens or default_budget or None
    if budget is None:
        budget = max(1, max_tokens // 2)
    choice = req.tool_choice
    prefill: Literal["", "required", "named"] = ""
    if choice == "required":
        prefill = "required"
    elif choice is not None and not isinstance(choice, str):
        prefill = "named"
        tools = [t for t in tools if t.function.name == choice.function.name]
    spec = AnswerSpec(
        json_schema=fmt.json_schema.schema_ or {} if fmt is not None and fmt.json_schema is not None else None,
        json_any_object=fmt is not None and fmt.type == "json_object",
        tools=[ToolSpec(t.function.name, t.function.parameters, bool(t.function.strict)) for t in tools],
        calls="none" if choice == "none" else "auto",
        reasoning_budget=budget,
    )
    return enforceable(harmony_grammar(spec, prefill=prefill), _grammar_param(req))


def _grammar_param(req: ChatCompletionRequest) -> str:
    """The field a schema the grammar library cannot enforce came from."""
    fmt = req.response_format
    if fmt is not None and fmt.json_schema is not None:
        return "response_format.json_schema.schema"
    strict = [i for i, t in enumerate(req.tools or ()) if t.function.strict]
    return f"tools[{strict[0]}].function.parameters" if strict else "tools"


class TextChunk:
    """The SSE line of a chunk whose delta is only text (content, reasoning, refusal): most of a stream.

    The same JSON as :class:`ChatCompletionChunk` would give (a test holds them equal), built from
    a fixed head and tail around the delta instead of validating and serialising a model per token.
    """

    #: ChoiceDelta's text fields, in its field order (the JSON keeps that order).
    FIELDS = ("content", "refusal", "reasoning_content", "reasoning")

    def __init__(self, id: str, created: int, model: str) -> None:
        self._head = 'data: {"id":' + _json(id) + ',"choices":[{"index":'
        self._tail = (
            ',"logprobs":null,"finish_reason":null}],"created":'
            + str(created)
            + ',"model":'
            + _json(model)
            + ',"object":"chat.completion.chunk","usage":null}\n\n'
        )

    def __call__(self, index: int, delta: dict[str, Any]) -> str | None:
        """The line for ``delta``, or None when it holds more than text (the caller uses the model)."""
        if not delta or any(k not in self.FIELDS or not isinstance(v, str) for k, v in delta.items()):
            return None
        ordered = {k: delta[k] for k in self.FIELDS if k in delta}
        return self._head + str(index) + ',"delta":' + _json(ordered) + self._tail


def _json(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is: what pydantic's ``model_dump_json`` writes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ChatJob(Job):
    request: ChatCompletionRequest
    runs: list[ChoiceRun]
    prompt_tokens: int
    model: str
    hold: Any = field(default_factory=NoHold)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict[str, Any]:
        reasoning = sum(r.parser.reasoning_token_count for r in self.runs)
        return {**self.token_usage(), "completion_tokens_details": {"reasoning_tokens": reasoning}}

    async def response(self) -> ChatCompletion:
        """Drain every choice (the same pieces the stream would send) into one response."""
        acc: dict[int, dict[str, Any]] = {r.index: {"tool_calls": {}} for r in self.runs}
        logprobs: dict[int, list[dict[str, Any]]] = {r.index: [] for r in self.runs}
        async for piece in merge_streams([r.pieces() for r in self.runs]):
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
        return merge_streams([r.pieces() for r in self.runs])

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

        text_chunk = TextChunk(self.id, self.created, self.model)
        try:
            for r in self.runs:
                yield chunk([{"index": r.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            async for piece in merge_streams([r.pieces() for r in self.runs]):
                if piece.logprobs is None and (fast := text_chunk(piece.index, piece.delta)) is not None:
                    yield fast
                    continue
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

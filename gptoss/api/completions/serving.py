"""Legacy completions between the thin routes and the engine: raw text in, raw text out.

Prompts are tokenised as raw text (no Harmony rendering), submitted as ``n`` engine requests
each, and each choice's token events go through one :class:`CompletionRun` (incremental
detokenisation, stop strings, legacy logprobs); streaming and not share the same pieces.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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
from gptoss.api.completions.protocol import Completion, CompletionRequest
from gptoss.engine.types import GenerationRequest, RequestStream
from gptoss.errors import APIError, bad_request
from gptoss.harmony import IncrementalDecoder, StopMatcher, token_text
from gptoss.harmony.grammar import document_grammar
from gptoss.harmony.vocab import ENDOFTEXT_TOKEN, text_encoding


class CompletionRun:
    """One choice of a raw-text completion: incremental detokenization and stop strings."""

    def __init__(
        self,
        index: int,
        stream: RequestStream,
        stops: list[str],
        logprobs: int | None,
        observer: TokenObserver | None = None,
    ) -> None:
        self.index = index
        self.stream = stream
        self.clock = TokenClock(observer)
        self.decoder = IncrementalDecoder()
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


def completion_grammar(req: CompletionRequest) -> str | None:
    """A JSON ``response_format`` makes the raw completion one JSON document (no reasoning here)."""
    fmt = req.response_format
    if fmt is None or not fmt.is_json:
        return None
    schema = fmt.json_schema.schema_ or {} if fmt.json_schema is not None else None
    param = "response_format.json_schema.schema" if fmt.json_schema is not None else "response_format"
    return enforceable(document_grammar(schema), param)


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
            async with LARGE_INPUTS:
                prompts = await asyncio.to_thread(self._prompts, req)
        else:
            prompts = await asyncio.to_thread(self._prompts, req)  # tokenising: off the loop
        runs: list[CompletionRun] = []
        echoes: list[str] = []
        budgets = [resolve_max_tokens(b, len(prompt), req.max_tokens) for prompt in prompts]
        limit = admission.limit()
        if limit is not None and req.max_tokens is None:  # the default fits the key's budget
            per_token = len(budgets) * (req.n or 1)
            room = (limit - sum(len(p) for p in prompts)) // per_token
            budgets = [max(1, min(m, room)) for m in budgets]
        grammar = None
        if req.response_format is not None and req.response_format.is_json:  # a first schema check is slow
            grammar = await asyncio.to_thread(completion_grammar, req)
        prompt_tokens = sum(len(prompt) for prompt in prompts)
        hold = admission.reserve(prompt_tokens + sum(budgets) * (req.n or 1))
        try:
            for prompt, max_tokens in zip(prompts, budgets):
                for j in range(req.n or 1):
                    params = to_sampling_params(
                        req, max_tokens=max_tokens, stop_token_ids=self._stop_tokens, seed_offset=j, grammar=grammar
                    )
                    stream = b.engine.submit(GenerationRequest(list(prompt), params, key_name=key_name))
                    runs.append(
                        CompletionRun(len(runs), stream, req.stop_sequences(), req.logprobs, b.observer)
                    )
                    echoes.append(b.encoding.decode(prompt) if req.echo else "")
        except BaseException:
            for r in runs:
                r.stream.cancel()
            hold.settle(0)
            raise
        return CompletionJob(req, runs, echoes, prompt_tokens, b.settings.served_model_name, hold)


@dataclass
class CompletionJob(Job):
    request: CompletionRequest
    runs: list[CompletionRun]
    echoes: list[str]
    prompt_tokens: int
    model: str
    hold: Any = field(default_factory=NoHold)
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
        async for index, text, lp, _ in merge_streams([r.pieces() for r in self.runs]):
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
            async for index, text, lp, finish in merge_streams([r.pieces() for r in self.runs]):
                c = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
                yield Completion.model_validate(self._envelope([c], None)).to_sse()
            if include_usage:
                yield Completion.model_validate(self._envelope([], self.usage())).to_sse()
        except Exception as exc:  # headers are sent: the error goes in the stream, then [DONE]
            yield sse_error(exc)
        finally:
            self.cancel()
        yield SSE_DONE

"""A chat job's pieces as Responses API stream events: one generator for streamed and whole responses.

The chat path yields deltas (reasoning, content, tool calls); each kind opens an output item
(``reasoning``, ``message``, ``function_call``) and a new kind closes the open one, with
OpenAI's events in OpenAI's order: ``response.created``, ``response.in_progress``, then per item
``output_item.added`` (and ``content_part.added``), the deltas, their ``.done`` events,
``output_item.done``; last ``response.completed``, ``response.incomplete`` (the output budget
ran out) or ``response.failed``. ``sequence_number`` counts from 0. The non-streamed response is
the last event's response: the same items, built the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gptoss.api.errors import api_error_from
from gptoss.api.responses.items import encode_reasoning, new_id
from gptoss.errors import APIError

logger = logging.getLogger(__name__)

Event = dict[str, Any]
#: Called with the finished response before its last event goes out (stores it); returns an error
#: that turns the response into a failed one (it could not be stored), or None.
Finisher = Callable[[dict[str, Any]], Awaitable[APIError | None]]


def _reasoning_delta(delta: dict[str, Any]) -> str | None:
    """The chat delta's reasoning text, whichever field the server fills (GPTOSS_REASONING_FIELD)."""
    text = delta.get("reasoning_content")
    return text if text is not None else delta.get("reasoning")


class _Item:
    """The output item being generated."""

    def __init__(self, kind: str, index: int, item_id: str, **fields: Any) -> None:
        self.kind = kind
        self.index = index
        self.id = item_id
        self.text = ""  # reasoning, message text, or function arguments
        self.fields = fields  # function_call: call_id, name


def usage_of(chat_usage: dict[str, Any]) -> dict[str, Any]:
    """Chat token usage in the Responses API's names."""
    details = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens", 0)},
        "total_tokens": chat_usage["total_tokens"],
    }


class ResponseEvents:
    """Turns one chat job into the events of one response.

    ``response`` is the response object as ``response.created`` shows it (its echoed request
    fields); ``pieces`` the chat job's pieces, ``usage`` its token counts once they end.
    """

    def __init__(
        self,
        response: dict[str, Any],
        pieces: Callable[[], AsyncIterator[Any]],
        usage: Callable[[], dict[str, Any]],
        finish_reason: Callable[[], str | None],
        finish: Finisher,
        *,
        encrypted_reasoning: bool = False,
    ) -> None:
        self.response = response
        self._pieces = pieces
        self._usage = usage
        self._finish_reason = finish_reason
        self._finish = finish
        self._encrypted = encrypted_reasoning
        self.output: list[dict[str, Any]] = []
        self.error: APIError | None = None  # why the response failed, if it did
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._open: _Item | None = None

    @property
    def sequence_number(self) -> int:
        """The next event's sequence number."""
        return self._seq

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return event

    def snapshot(self, status: str) -> dict[str, Any]:
        return {**self.response, "status": status, "output": list(self.output)}

    # --- items ------------------------------------------------------------------------------------

    def _start(self, kind: str, **fields: Any) -> list[Event]:
        events = self._close("completed")
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = self._open = _Item(kind, len(self.output), new_id(prefix), **fields)
        events.append(
            self._event(
                "response.output_item.added",
                output_index=item.index,
                item=self._item_body(item, "in_progress", started=True),
            )
        )
        if kind != "function_call":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    part=self._part(item, ""),
                )
            )
        return events

    def _part(self, item: _Item, text: str) -> dict[str, Any]:
        if item.kind == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item_body(self, item: _Item, status: str, *, started: bool = False) -> dict[str, Any]:
        if item.kind == "function_call":
            return {
                "id": item.id,
                "type": "function_call",
                "status": status,
                "call_id": item.fields["call_id"],
                "name": item.fields["name"],
                "arguments": "" if started else item.text,
            }
        content = [] if started else [self._part(item, item.text)]
        if item.kind == "reasoning":
            body = {"id": item.id, "type": "reasoning", "status": status, "summary": [], "content": content}
            if self._encrypted and not started:
                body["encrypted_content"] = encode_reasoning(item.text)
            return body
        return {"id": item.id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _close(self, status: str) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            events = [
                self._event(
                    "response.function_call_arguments.done", **where, name=item.fields["name"], arguments=item.text
                )
            ]
        else:
            if item.kind == "reasoning":
                events = [self._event("response.reasoning_text.done", **where, content_index=0, text=item.text)]
            else:
                events = [
                    self._event("response.output_text.done", **where, content_index=0, text=item.text, logprobs=[])
                ]
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=self._part(item, item.text))
            )
        body = self._item_body(item, status)
        self.output.append(body)
        events.append(self._event("response.output_item.done", output_index=item.index, item=body))
        return events

    def _text(self, kind: str, text: str) -> list[Event]:
        events = [] if self._open is not None and self._open.kind == kind else self._start(kind)
        item = self._open
        assert item is not None
        item.text += text
        delta_type = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        events.append(
            self._event(delta_type, item_id=item.id, output_index=item.index, content_index=0, delta=text, **extra)
        )
        return events

    def _tool_calls(self, calls: list[dict[str, Any]]) -> list[Event]:
        events: list[Event] = []
        for call in calls:
            fn = call.get("function") or {}
            if call.get("id") is not None or self._open is None or self._open.kind != "function_call":
                events += self._start(
                    "function_call", call_id=call.get("id") or new_id("call"), name=fn.get("name") or ""
                )
            item = self._open
            assert item is not None
            args = fn.get("arguments") or ""
            if args:
                item.text += args
                events.append(
                    self._event(
                        "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=args
                    )
                )
        return events

    def _on_delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        reasoning = _reasoning_delta(delta)
        if reasoning:
            events += self._text("reasoning", reasoning)
        if delta.get("content"):
            events += self._text("message", delta["content"])
        if delta.get("tool_calls"):
            events += self._tool_calls(delta["tool_calls"])
        return events

    # --- the response -----------------------------------------------------------------------------

    def _failed(self, err: APIError) -> None:
        self.error = err
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        self.response = {**self.response, "error": {"code": code, "message": err.message}}

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the response, in order; the last one carries the finished response."""
        yield self._event("response.created", response=self.snapshot("in_progress"))
        yield self._event("response.in_progress", response=self.snapshot("in_progress"))
        status = "completed"
        try:
            async for piece in self._pieces():
                for event in self._on_delta(piece.delta):
                    yield event
            if self._finish_reason() == "length":
                status = "incomplete"
                self.response = {**self.response, "incomplete_details": {"reason": "max_output_tokens"}}
        except Exception as exc:  # headers may be out: the failure is told in the last event
            self._failed(api_error_from(exc))
            status = "failed"
        for event in self._close("completed" if status == "completed" else "incomplete"):
            yield event
        self.response = {**self.response, "usage": usage_of(self._usage())}
        if status == "completed":
            self.response["completed_at"] = int(time.time())
        final = self.snapshot(status)
        problem = await self._finish(final)
        if problem is not None:
            self._failed(problem)
            self.response.pop("completed_at", None)
            final = self.snapshot(status := "failed")
        self.final = final
        yield self._event(f"response.{status}", response=final)

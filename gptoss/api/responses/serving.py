"""``/v1/responses``: a Responses request answered by the chat path, stored, read back, deleted.

:func:`start_response` loads the ``previous_response_id`` history, translates the request into a
chat request (:mod:`gptoss.api.responses.items`), starts it the way every generation starts
(the route passes ``start_job``: model, key, limits, metrics), and returns a :class:`ResponseJob`
whose events (:mod:`gptoss.api.responses.events`) are either streamed as SSE or drained into the
response. When the response ends it is stored (``store`` defaults to true) before its last event
is sent. Every stored record belongs to the caller's key name (``""`` with auth off); another
key's id is answered exactly as an unknown id (404).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gptoss.api.chat.protocol import ChatCompletionRequest
from gptoss.api.common.protocol import validation_error_to_api_error
from gptoss.api.common.serving import Backend
from gptoss.api.errors import api_error_from
from gptoss.api.responses.events import ResponseEvents
from gptoss.api.responses.items import chat_body, new_id, restate, stored_input
from gptoss.api.responses.protocol import FunctionToolChoice, ResponseCreateRequest
from gptoss.errors import APIError, bad_request
from gptoss.harmony import HarmonyInputError
from gptoss.state import ResponseStore, ResponseStoreError, StoredResponse

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 100


def _store_error(exc: ResponseStoreError) -> APIError:
    return APIError(
        503, f"Response storage is unavailable: {exc}", code="store_unavailable", headers={"Retry-After": "5"}
    )


def _not_found(response_id: str, param: str | None = None) -> APIError:
    shown = response_id if len(response_id) <= 100 else response_id[:100] + "..."
    prefix = "Previous response" if param == "previous_response_id" else "Response"
    return APIError(404, f"{prefix} with id '{shown}' not found.", param=param, code="not_found")


async def read_stored(
    store: ResponseStore | None, response_id: str, owner: str, param: str | None = None
) -> StoredResponse:
    """The caller's stored response, or a 404 (unknown, expired, deleted, or someone else's)."""
    if store is None:
        raise _not_found(response_id, param)
    try:
        record = await store.get(response_id, owner)
    except ResponseStoreError as exc:
        raise _store_error(exc) from exc
    if record is None:
        raise _not_found(response_id, param)
    return record


async def delete_stored(store: ResponseStore | None, response_id: str, owner: str) -> dict[str, Any]:
    if store is None:
        raise _not_found(response_id)
    try:
        deleted = await store.delete(response_id, owner)
    except ResponseStoreError as exc:
        raise _store_error(exc) from exc
    if not deleted:
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


def list_input_items(record: StoredResponse, *, after: str | None, limit: int, order: str) -> dict[str, Any]:
    """One page of a stored response's input items (OpenAI's ResponseItemList; newest first by default)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit", code="invalid_value")
    if order not in ("asc", "desc"):
        raise bad_request("order must be 'asc' or 'desc'", param="order", code="invalid_value")
    items = record.input_items if order == "asc" else list(reversed(record.input_items))
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(
                f"after: no input item with id '{after[:100]}' in this response", param="after", code="invalid_value"
            )
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": len(items) > limit,
    }


def _echo(req: ResponseCreateRequest, chat: ChatCompletionRequest, response_id: str) -> dict[str, Any]:
    """The response object before any output: the request fields OpenAI echoes, with their defaults."""
    choice: Any = req.tool_choice or "auto"
    if isinstance(choice, FunctionToolChoice):
        choice = {"type": "function", "name": choice.name}
    text_format = req.text.format.echo() if req.text and req.text.format else {"type": "text"}
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": chat.effective_reasoning_effort(),
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "store": req.stores,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": text_format, "verbosity": (req.text.verbosity if req.text else None) or "medium"},
        "tool_choice": choice,
        "tools": [t.model_dump() for t in req.tools or ()],
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "metadata": req.metadata or {},
        "background": False,
        "service_tier": "default",
        "top_logprobs": 0,
    }
    for key in ("user", "safety_identifier", "prompt_cache_key"):  # strings, not nullable in OpenAI's schema
        if getattr(req, key) is not None:
            response[key] = getattr(req, key)
    return response


def chat_request(body: dict[str, Any], where: list[str]) -> ChatCompletionRequest:
    """The chat request, its validation errors restated in the Responses request's names."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise restate(validation_error_to_api_error(exc), where) from None


def sse_event(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class ResponseJob:
    """A response being generated: its chat job (budget, usage, cancel) and its events."""

    chat: Any  # ChatJob
    events: ResponseEvents

    def cancel(self) -> None:
        self.chat.cancel()

    def settle(self) -> None:
        self.chat.settle()

    def usage(self) -> dict[str, Any]:
        return self.chat.usage()

    async def sse(self) -> AsyncIterator[str]:
        """The events as SSE (``event:`` and ``data:`` lines; the Responses stream has no ``[DONE]``)."""
        try:
            async for event in self.events.events():
                yield sse_event(event)
        except Exception as exc:  # not the generation's (that ends as response.failed): a bug of ours
            err = api_error_from(exc)
            event = {"type": "error", "code": err.code, "message": err.message, "param": err.param}
            yield sse_event({**event, "sequence_number": self.events.sequence_number})
        finally:
            self.cancel()

    async def response(self) -> dict[str, Any]:
        """The finished response; a failed one is the error's status and body, as chat answers."""
        async for _ in self.events.events():
            pass
        if self.events.error is not None:
            raise self.events.error
        assert self.events.final is not None
        return self.events.final


async def start_response(
    backend: Backend,
    req: ResponseCreateRequest,
    owner: str,
    start_chat: Callable[[ChatCompletionRequest], Awaitable[Any]],
) -> ResponseJob:
    """Resolve the history, translate, start the chat job; errors name the Responses fields."""
    store = backend.store
    if req.stores and store is None:
        raise bad_request("this server keeps no responses; send store: false", param="store", code="unsupported_value")
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        history = (await read_stored(store, req.previous_response_id, owner, "previous_response_id")).history
    inputs = stored_input(req)
    body, where = chat_body(req, history, inputs)
    chat = chat_request(body, where)
    try:
        job = await start_chat(chat)
    except (APIError, HarmonyInputError) as exc:
        raise restate(api_error_from(exc), where) from None
    response_id = new_id("resp")

    async def finish(final: dict[str, Any]) -> APIError | None:
        if not req.stores or store is None:
            return None
        record = StoredResponse(
            id=response_id,
            owner=owner,
            created_at=float(final["created_at"]),  # retention counts from the response's creation
            response=final,
            input_items=inputs,
            history=history + inputs + final["output"],
        )
        try:
            await store.put(record)
        except ResponseStoreError as exc:
            logger.warning("response %s could not be stored: %s", response_id, exc)
            return _store_error(exc)
        return None

    events = ResponseEvents(
        _echo(req, chat, response_id),
        job.pieces,
        job.usage,
        lambda: job.runs[0].finish_reason,
        finish,
        encrypted_reasoning=req.wants_encrypted_reasoning,
    )
    return ResponseJob(job, events)

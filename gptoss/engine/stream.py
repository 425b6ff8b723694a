"""How token events travel from the engine's thread to the event loop: one stream per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gptoss.engine.types import GenerationRequest, TokenEvent

#: One step's deliveries: for each request, its new events or the exception that ended it.
Deliveries = list[tuple[Any, "list[TokenEvent] | BaseException"]]


class TokenStream:
    """Async iterator over one request's :class:`TokenEvent`s; ``cancel()`` stops generation."""

    def __init__(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[], None]
    ) -> None:
        self.request_id = request.request_id
        self._on_cancel = on_cancel
        self._queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        self._loop = loop
        self._done = False
        self.cancelled = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def ready_events(self) -> list[TokenEvent]:
        """Events already delivered, without waiting (up to and including the last one).

        Lets a consumer that fell behind fold several tokens into one response chunk
        instead of paying the per-chunk cost for each.
        """
        out: list[TokenEvent] = []
        while not self._done and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)  # raised by the next __anext__
                break
            out.append(item)
            if item.finish_reason is not None:
                self._done = True
        return out

    def cancel(self) -> None:
        if not self._done and not self.cancelled:
            self.cancelled = True
            self._on_cancel()

    @property
    def done(self) -> bool:
        return self._done

    def _put(self, item: TokenEvent | BaseException) -> None:
        self._queue.put_nowait(item)


def post_to_loops(deliveries: Deliveries) -> None:
    """Hand deliveries for streams to their event loops: one ``call_soon_threadsafe`` per loop.

    The thread front end's sink; the process front end calls it for each step it receives.
    """
    by_loop: dict[asyncio.AbstractEventLoop, Deliveries] = {}
    for stream, payload in deliveries:
        by_loop.setdefault(stream._loop, []).append((stream, payload))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(deliver, items)
        except RuntimeError:  # the client's loop is gone; nothing to tell
            pass


def deliver(items: Deliveries) -> None:
    """On the event loop: put each request's events (or its error) on its stream."""
    for stream, payload in items:
        if isinstance(payload, BaseException):
            stream._put(payload)
        else:
            for ev in payload:
                stream._put(ev)

"""The outer guard of every HTTP request: known routes only, bounded bodies, OpenAI-shaped errors.

A pure ASGI middleware that runs before the key check (inside the access log, so its answers are
logged and counted):

- a path that is not in :data:`routes.ROUTES` gets a JSON 404, whatever key it carries;
- a body larger than ``GPTOSS_MAX_REQUEST_BYTES`` gets a 413: at once by its ``Content-Length``,
  or, for a chunked body, once the app has read that much (after the key check: nothing is read
  ahead here for a caller without a key);
- an error response from anything behind it (BentoML's own routes answer text or
  ``{"error": "..."}``) leaves as ``{"error": {"message", "type", "param", "code"}}`` with the
  same status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from gptoss.errors import APIError, send_error
from gptoss.routes import find_route
from gptoss.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: Error bodies are small; a larger one is passed on as it is rather than held in memory.
MAX_ERROR_BODY = 64 * 1024
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 503: "service_unavailable"}


def _is_openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]


def _message_of(body: bytes, status: int) -> str:
    """The human part of a non-OpenAI error body: ``{"error": "..."}``, ``{"detail": ...}`` or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:  # BentoML wraps some errors in a one-item list
        data = data[0]
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    if text and len(text) <= 500 and "<" not in text:
        return text
    return {404: "Not found.", 405: "Method not allowed.", 503: "Service unavailable."}.get(status, "Request failed.")


class RequestGuardMiddleware:
    """See the module docstring. BentoML builds it as ``RequestGuardMiddleware(app)``."""

    def __init__(self, app: Callable[..., Any], *, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings

    @property
    def max_body(self) -> int:
        return (self._settings or get_settings()).max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        if find_route(scope.get("path", "")) is None:
            await send_error(send, APIError(404, f"Unknown path: {scope.get('path', '')[:200]}", code="not_found"))
            return
        limit = self.max_body
        too_large = APIError(
            413, f"The request body is larger than this server accepts ({limit} bytes).", code="request_too_large"
        )
        length = _content_length(scope)
        if length is not None and length > limit:
            await send_error(send, too_large)
            return
        if length is not None:
            await self.app(scope, receive, _shaping_errors(send))
            return
        # No Content-Length (chunked): count the body as the app reads it, after the key check,
        # rather than holding it here for anyone who connects.
        counter = _BodyCounter(receive, limit, too_large)
        started = False

        async def watching(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counter.receive, _shaping_errors(watching, override=counter.error))
        except APIError as exc:
            if exc is not too_large or started:
                raise
            await send_error(send, too_large)


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _BodyCounter:
    """``receive`` that counts the body's bytes and raises the 413 once they pass the limit.

    The app may catch that error on its way out and answer something else (a framework's 500):
    :meth:`error` tells the error shaper to send the 413 instead.
    """

    def __init__(self, receive: Callable[..., Any], limit: int, too_large: APIError) -> None:
        self._receive = receive
        self._limit = limit
        self._too_large = too_large
        self._total = 0
        self.exceeded = False

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message.get("type") == "http.request":
            self._total += len(message.get("body", b""))
            if self._total > self._limit:
                self.exceeded = True
                raise self._too_large
        return message

    def error(self) -> APIError | None:
        return self._too_large if self.exceeded else None


def _shaping_errors(
    send: Callable[..., Any], override: Callable[[], APIError | None] = lambda: None
) -> Callable[..., Any]:
    """``send`` that turns error responses that are not in OpenAI's shape into that shape.

    ``override()``, when it returns an error, replaces whatever error response the app sends.
    """
    held: dict[str, Any] | None = None
    parts: list[bytes] = []
    size = 0

    async def shaped(message: dict[str, Any]) -> None:
        nonlocal held, size
        kind = message.get("type")
        if kind == "http.response.start" and int(message.get("status", 200)) >= 400:
            held = message
            return
        if held is None or kind != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        size += len(parts[-1])
        more = message.get("more_body", False)
        if size > MAX_ERROR_BODY:  # not an error body worth rewriting: let it through as it is
            start, held = held, None
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": more})
            return
        if more:
            return
        body = b"".join(parts)
        start, held = held, None
        status = int(start["status"])
        replacement = override()
        if replacement is not None:
            await send_error(send, replacement)
            return
        if _is_openai_error(body):
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        err = APIError(status, _message_of(body, status), code=_CODES.get(status))
        dropped = (b"content-type", b"content-length")
        keep = [(k, v) for k, v in start.get("headers", ()) if bytes(k).lower() not in dropped]
        err.headers = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in keep}
        await send_error(send, err)

    return shaped

"""Structured access log and request metrics: one ``gptoss.access`` line per API request.

A pure ASGI middleware, added in service.py *outside* the auth middleware so that it also sees
401/403/429 answers, and reads the key name that auth puts in ``scope["state"]`` (the same dict
all the way in). The routes add the model and token counts to the request's
:class:`AccessRecord` (:func:`note`). The line never holds the API key, and holds the prompt
only with ``GPTOSS_LOG_PROMPTS=true``.

Every request gets an id: the client's ``x-request-id`` when it is safe to log (at most 128
characters of ``[A-Za-z0-9._-]``), else a fresh one. It is returned as ``x-request-id``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gptoss.routes import find_route
from gptoss.settings import Settings, get_settings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("gptoss.access")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Where the record lives in ``scope["state"]``.
STATE_KEY = "access"
MAX_LOGGED_PROMPT = 4000
MAX_LOGGED_FIELD = 200


def request_id_from(headers: Any) -> str:
    """The client's ``x-request-id`` if valid (exactly one, ≤ 128 chars of [A-Za-z0-9._-]), else a new id."""
    values = [v for k, v in headers or () if bytes(k).lower() == REQUEST_ID_HEADER]
    if len(values) == 1:
        try:
            candidate = bytes(values[0]).decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        if _REQUEST_ID_RE.fullmatch(candidate):
            return candidate
    return uuid.uuid4().hex


@dataclass
class AccessRecord:
    """What one request's access line says; the routes fill in model, tokens and prompt."""

    request_id: str
    method: str
    path: str
    status: int = 0
    key: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    stream: bool | None = None
    prompt: str | None = None

    def fields(self, *, include_prompt: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "endpoint": self.path[:MAX_LOGGED_FIELD],
            "status": self.status,
            "key": self.key or "-",
            "model": (self.model or "-")[:MAX_LOGGED_FIELD],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round(self.latency_ms, 1),
        }
        if self.stream is not None:
            out["stream"] = self.stream
        if include_prompt and self.prompt is not None:
            out["prompt"] = self.prompt[:MAX_LOGGED_PROMPT]
        return out


def access_record(obj: Any) -> AccessRecord | None:
    """The request's record from a Starlette request, an ASGI scope or its state dict; None if absent."""
    scope = getattr(obj, "scope", obj)
    if not isinstance(scope, Mapping):
        return None
    state = scope.get("state", scope)
    record = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    return record if isinstance(record, AccessRecord) else None


def note(obj: Any, **fields: Any) -> None:
    """Set fields of the request's access record (no-op without the middleware, e.g. in unit tests)."""
    record = access_record(obj)
    if record is None:
        return
    for name, value in fields.items():
        setattr(record, name, value)


def note_prompt(obj: Any, settings: Settings, prompt: Callable[[], Any]) -> None:
    """Keep the prompt for the access line, only when ``GPTOSS_LOG_PROMPTS`` is on (else not even built)."""
    if not settings.log_prompts or access_record(obj) is None:
        return
    value = prompt()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    note(obj, prompt=text[:MAX_LOGGED_PROMPT])


_LOGFMT_PLAIN = re.compile(r"[A-Za-z0-9._:/{}@+-]+")


def _logfmt_value(value: Any) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    return text if _LOGFMT_PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def format_line(fields: Mapping[str, Any], fmt: str = "logfmt") -> str:
    """``key=value`` pairs (values quoted when needed) or one JSON object."""
    if fmt == "json":
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def _record_metrics(record: AccessRecord, settings: Settings) -> None:
    from gptoss.observability.metrics import HIDDEN_KEY, get_metrics, record_request

    if find_route(record.path) is None:  # anyone can send these: they must not move /metrics
        return

    record_request(
        get_metrics(),
        endpoint=record.path,
        status=record.status,
        # Key names are often people's e-mail addresses: only where the operator asked for them.
        key=record.key if settings.metrics_key_names else HIDDEN_KEY,
        # One model is served; its name bounds the label (the requested one could be anything).
        model=settings.served_model_name if record.model is not None else None,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
    )


class AccessLogMiddleware:
    """Pure ASGI middleware: request id, one access line and the request metrics per request."""

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        settings: Settings | None = None,
        on_finish: Callable[[AccessRecord, Settings], None] | None = _record_metrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self._settings = settings
        self.on_finish = on_finish
        self.clock = clock

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers"))
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path = scope.get("path", "")
        route = find_route(path)
        if route is not None and route.access in ("probe", "metrics"):  # would drown the lines that matter
            await self.app(scope, receive, _with_header(send, header))
            return
        record = AccessRecord(request_id=request_id, method=scope.get("method", ""), path=path)
        state[STATE_KEY] = record
        started = self.clock()

        async def send_and_watch(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                record.status = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, _with_header(send_and_watch, header))
            if record.status == 0:
                record.status = 499  # no response started: the client went away first
        except BaseException:
            if record.status == 0:
                record.status = 500  # what the server in front will answer
            raise
        finally:
            record.latency_ms = (self.clock() - started) * 1000.0
            if record.key is None:
                record.key = state.get("key_name")
            self._finish(record)

    def _finish(self, record: AccessRecord) -> None:
        settings = self.settings
        try:
            if settings.access_log:
                line = format_line(record.fields(include_prompt=settings.log_prompts), settings.access_log_format)
                access_logger.info("%s", line)
            if self.on_finish is not None:
                self.on_finish(record, settings)
        except Exception:  # logging or metrics must never fail a request
            logger.exception("Recording the access log / metrics failed")


def _with_header(send: Callable[..., Any], header: tuple[bytes, bytes]) -> Callable[..., Any]:
    """``send`` that sets ``x-request-id`` on the response start (replacing any other value)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if bytes(k).lower() != REQUEST_ID_HEADER]
            message = {**message, "headers": [*headers, header]}
        await send(message)

    return wrapped

"""The OpenAI-compatible HTTP API (FastAPI): thin routes over each endpoint's serving module.

:func:`create_app` builds the app; service.py mounts one at the server root (so the API lives
at ``/v1/...``, the health check at ``/health``, the docs at ``/docs`` and ``/redoc``) and hands
it its :class:`Backend` once the engine exists; tests build their own. Every error, including
FastAPI's own validation and routing errors, leaves as an OpenAI-shaped body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptoss.api.chat.protocol import ChatCompletion, ChatCompletionRequest
from gptoss.api.chat.serving import ChatHandler
from gptoss.api.common.protocol import ErrorResponse, ModelCard, ModelList, validation_error_to_api_error
from gptoss.api.common.serving import Backend, check_model
from gptoss.api.completions.protocol import Completion, CompletionRequest
from gptoss.api.completions.serving import CompletionHandler
from gptoss.api.errors import api_error_from
from gptoss.api.responses.protocol import ResponseCreateRequest
from gptoss.api.responses.serving import delete_stored, list_input_items, read_stored, start_response
from gptoss.auth import check_model_access, get_principal, reserve_tokens
from gptoss.engine.types import EngineError, EngineNotReady
from gptoss.errors import APIError
from gptoss.harmony import HarmonyInputError
from gptoss.observability.access_log import note, note_prompt
from gptoss.observability.metrics import exposition

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)
}

router = APIRouter()


def create_app(backend: Backend | None = None) -> FastAPI:
    """The API as an ASGI app; ``backend`` may be attached later (``app.state.backend``)."""
    app = FastAPI(
        title="gpt-oss OpenAI-compatible API",
        description="OpenAI-compatible chat and completions for gpt-oss, served by BentoML. "
        "Authenticate with `Authorization: Bearer <API key>`.",
        version="1.0.0",
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    app.state.backend = backend
    app.include_router(router)
    # The known types are answered inside the app; a handler for Exception alone would also
    # make Starlette re-raise (and log a traceback for) every expected 4xx/5xx.
    for known in (APIError, EngineError, HarmonyInputError):
        app.add_exception_handler(known, _mapped_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _mapped_error)
    return app


def ready_backend(backend: Backend | None) -> Backend:
    """``backend`` once its engine serves; otherwise the 503 a client gets while the model loads."""
    if backend is None or not backend.engine.ready:
        raise EngineNotReady("the model is still loading")
    return backend


def _backend(request: Request) -> Backend:
    return ready_backend(getattr(request.app.state, "backend", None))


def _authorize_model(request: Request, backend: Backend, model: str) -> None:
    """The served model, and one the calling key may use: 404, then 403."""
    check_model(backend, model)
    check_model_access(get_principal(request), model)


class KeyBudget:
    """The calling key's tpm budget (common.serving.Admission): held at admission, settled at the end."""

    def __init__(self, request: Request) -> None:
        self.principal = get_principal(request)

    def limit(self) -> int | None:
        return self.principal.limits.tpm if self.principal is not None else None

    def reserve(self, tokens: int) -> Any:
        return reserve_tokens(self.principal, tokens)


def finish_job(request: Request, job: Any) -> None:
    """After a generation: give back the unused token budget and tell the access log the usage."""
    job.settle()
    usage = job.usage()
    note(request, prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])


# --- errors ---------------------------------------------------------------------------------------


def _json_error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _json_error(validation_error_to_api_error(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _json_error(APIError(exc.status_code, str(exc.detail), code=code))


async def _mapped_error(_: Request, exc: Exception) -> JSONResponse:
    """Ours, the engine's, Harmony's and anything unexpected: one mapping (api/errors.py)."""
    return _json_error(api_error_from(exc))


# --- routes ---------------------------------------------------------------------------------------


@router.get("/health", tags=["health"], responses=_ERRORS)
async def health(request: Request) -> dict[str, str]:
    """Liveness + readiness: 200 once the model is loaded, 503 while it loads."""
    _backend(request)
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of every worker (a key is needed unless GPTOSS_PUBLIC_METRICS is on)."""
    body, content_type = await asyncio.to_thread(exposition)
    return Response(body, media_type=content_type)


def _model_card(backend: Backend) -> ModelCard:
    return ModelCard.model_validate(
        {
            "id": backend.settings.served_model_name,
            "object": "model",
            "created": backend.created,
            "owned_by": "openai",
            "max_model_len": backend.engine.max_context,
            "random_weights": backend.random_weights,
        }
    )


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=_ERRORS)
async def list_models(request: Request) -> ModelList:
    backend = _backend(request)
    return ModelList.model_validate({"object": "list", "data": [_model_card(backend)]})


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, tags=["models"], responses=_ERRORS)
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    backend = _backend(request)
    check_model(backend, model_id)
    return _model_card(backend)


async def _watch_disconnect(request: Request, cancel: Any) -> None:
    """Cancel generation when a non-streaming client goes away (frees its batch slot)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel()
            return


class _JobStream(StreamingResponse):
    """An SSE response that ends its job however the response ends.

    A generator's ``finally`` runs only if the generator was started and then closed; a client
    that leaves before the first chunk would leave the job generating and its tokens reserved.
    """

    def __init__(self, request: Request, job: Any) -> None:
        super().__init__(job.sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._request, self._job = request, job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()
            finish_job(self._request, self._job)


async def _respond(request: Request, job: Any, stream: bool) -> Any:
    if stream:
        return _JobStream(request, job)
    watcher = asyncio.create_task(_watch_disconnect(request, job.cancel))
    try:
        return await job.response()
    finally:
        watcher.cancel()
        finish_job(request, job)


async def start_job(request: Request, backend: Backend | None, body: Any, handler: type, prompt: Any) -> Any:
    """What every generation entry point does first: check model and key, start the job.

    The chat and completions routes and the native ``generate`` API all come through here;
    :func:`finish_job` is the other half.
    """
    note(request, model=body.model, stream=bool(body.stream))
    backend = ready_backend(backend)
    note_prompt(request, backend.settings, prompt)
    _authorize_model(request, backend, body.model)
    key_name = request.scope.get("state", {}).get("key_name")
    return await handler(backend).start(body, key_name=key_name, admission=KeyBudget(request))


async def _generate(request: Request, body: Any, handler: type, prompt: Any) -> Any:
    job = await start_job(request, request.app.state.backend, body, handler, prompt)
    return await _respond(request, job, bool(body.stream))


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    tags=["chat"],
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion; `stream: true` answers with server-sent events."""
    return await _generate(request, body, ChatHandler, lambda: body.model_dump(exclude_none=True).get("messages"))


@router.post(
    "/v1/completions",
    response_model=Completion,
    tags=["completions"],
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Legacy text completion on raw text (no Harmony rendering); `stream: true` for SSE."""
    return await _generate(request, body, CompletionHandler, lambda: body.prompt)


def _owner(request: Request) -> str:
    """Whose stored responses a request may see: its key's name ("" when keys are off)."""
    principal = get_principal(request)
    return principal.name if principal is not None else ""


def _attached_backend(request: Request) -> Backend:
    """The backend, loaded or not: stored responses are readable while the model loads."""
    backend = getattr(request.app.state, "backend", None)
    if backend is None:
        raise EngineNotReady("the server is starting")
    return backend


@router.post(
    "/v1/responses",
    tags=["responses"],
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseCreateRequest, request: Request) -> Any:
    """OpenAI's Responses API over the chat path; `stream: true` answers with server-sent events."""
    backend = ready_backend(request.app.state.backend)
    _authorize_model(request, backend, body.model)  # before any stored response is looked up

    def start_chat(chat: ChatCompletionRequest) -> Any:
        prompt = lambda: body.model_dump(exclude_none=True).get("input")  # noqa: E731
        return start_job(request, backend, chat, ChatHandler, prompt)

    job = await start_response(backend, body, _owner(request), start_chat)
    return await _respond(request, job, bool(body.stream))


@router.get("/v1/responses/{response_id}", tags=["responses"], responses=_ERRORS)
async def retrieve_response(response_id: str, request: Request, stream: bool = False) -> Any:
    """A stored response of the calling key."""
    if stream:
        raise APIError(
            400, "Streaming a stored response again is not supported.", param="stream", code="unsupported_value"
        )
    record = await read_stored(_attached_backend(request).store, response_id, _owner(request))
    return JSONResponse(record.response)


@router.delete("/v1/responses/{response_id}", tags=["responses"], responses=_ERRORS)
async def delete_response(response_id: str, request: Request) -> Any:
    """Delete a stored response of the calling key."""
    return await delete_stored(_attached_backend(request).store, response_id, _owner(request))


@router.get("/v1/responses/{response_id}/input_items", tags=["responses"], responses=_ERRORS)
async def response_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    limit: int = Query(20),
    order: str = "desc",
) -> Any:
    """The input items of a stored response of the calling key (newest first unless order=asc)."""
    record = await read_stored(_attached_backend(request).store, response_id, _owner(request))
    return list_input_items(record, after=after, limit=limit, order=order)


#: The app service.py mounts (``openai_compat.app``); its backend is attached at start.
app = create_app()

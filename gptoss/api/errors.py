"""What the client sees for an exception raised anywhere under a route: one mapping for all."""

from __future__ import annotations

import logging

from gptoss.engine.types import (
    EngineFault,
    EngineNotReady,
    EngineOverloaded,
    EngineShuttingDown,
    SequenceFailed,
)
from gptoss.errors import APIError, bad_request
from gptoss.harmony import HarmonyInputError

logger = logging.getLogger(__name__)


def api_error_from(exc: BaseException) -> APIError:
    """The OpenAI-shaped error a client gets for ``exc``, wherever it surfaced (route, stream, generate).

    Anything that is not one of ours is a server bug: it is logged with its traceback and the
    client gets a 500 without internals.
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, HarmonyInputError):  # the request cannot be put into gpt-oss's chat format
        return bad_request(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, EngineOverloaded):
        return APIError(429, f"Server is busy: {exc}. Retry shortly.", code="server_overloaded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, EngineShuttingDown):
        return APIError(503, f"{exc}.", code="shutting_down", headers={"Retry-After": "5"})
    if isinstance(exc, EngineNotReady):
        return APIError(503, f"Not ready: {exc}.", code="model_not_ready", headers={"Retry-After": "5"})
    if isinstance(exc, SequenceFailed):
        return APIError(500, f"Generation failed for this request: {exc}.", code="generation_failed")
    if isinstance(exc, EngineFault):
        return APIError(500, f"Generation failed: {exc}; retry the request.", code="engine_fault")
    logger.error("Unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, "Internal server error.", code="internal_error")

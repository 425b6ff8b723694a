"""BentoML wiring only: load the model once, mount the OpenAI app, guard it, start and stop.

    bentoml serve service:GptOss --port 8000
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import bentoml

from gptoss.api.app import app as openai_app
from gptoss.api.app import finish_job, start_job
from gptoss.api.chat.protocol import ChatCompletionRequest
from gptoss.api.chat.serving import ChatHandler
from gptoss.api.common.protocol import parse_request
from gptoss.api.common.serving import Backend
from gptoss.api.errors import api_error_from
from gptoss.api.guard import RequestGuardMiddleware
from gptoss.auth import AuthMiddleware, install_sighup_handler, validate_auth_config
from gptoss.engine.loader import build_engine, engine_config, loaded_weight_bytes
from gptoss.harmony.grammar import grammar_tokenizer
from gptoss.harmony.vocab import load_encoding, text_encoding
from gptoss.observability.access_log import AccessLogMiddleware
from gptoss.observability.metrics import EngineGauges, TokenTimings
from gptoss.routes import GENERATION_PATHS
from gptoss.settings import Settings, configure_logging, get_settings
from gptoss.state import check_response_store, open_response_store

logger = logging.getLogger("gptoss")

#: Not needed to serve: the original (unconverted) checkpoint and the Apple Metal weights.
HF_MODEL_EXCLUDE = ("original/*", "metal/*")
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hf_model_ref(settings: Settings) -> bentoml.models.HuggingFaceModel | None:
    """The Hugging Face checkpoint to pin in the Bento; None for ``tiny`` and local directories.

    As a service class attribute, ``bentoml build`` records its exact revision (this needs the
    Hub), ``bentoml containerize`` bakes the files into the image, and on the instance it
    resolves to a local directory. ``tiny`` and directories keep ``bentoml build`` offline.
    """
    model = settings.model
    if settings.is_tiny or Path(model).expanduser().is_dir() or not _HF_ID.fullmatch(model):
        return None
    return bentoml.models.HuggingFaceModel(model, exclude=list(HF_MODEL_EXCLUDE))


def service_resources(settings: Settings, engine: str) -> dict[str, Any]:
    """What one replica asks for, recorded in the Bento by ``bentoml build``.

    GPUs of ``GPTOSS_GPU_TYPE``, by default a 24 GB L4: both engines keep gpt-oss-20b's MoE
    experts in MXFP4 as published (13.8 GB of weights; ours adds a 1.6 GB dequantisation buffer)
    and size the KV cache from what is left (README, GPU sizing). Our engine: one GPU. vLLM: one
    per tensor-parallel shard (``GPTOSS_VLLM_TENSOR_PARALLEL_SIZE``).
    """
    gpus = settings.vllm_tensor_parallel_size if engine == "vllm" else 1
    return {"gpu": gpus, "gpu_type": settings.gpu_type}


def traffic_concurrency(settings: Settings) -> int:
    """What one replica decodes at once: the engine's running sequences (GPU default 128).

    BentoCloud's autoscaler targets it, so it adds replicas before requests start to queue;
    locally it limits nothing (the engine's own queue answers 429 when full).
    """
    return engine_config(settings, "cuda").max_running


# Secure by default: without keys (and without GPTOSS_AUTH_DISABLED) `bentoml serve` exits at
# once with how to add one, instead of letting BentoML restart a failing worker forever.
# `bentoml build` imports this module too and needs no keys.
_SETTINGS = get_settings()
configure_logging(_SETTINGS)
if "build" not in sys.argv[1:3]:
    validate_auth_config(_SETTINGS)
    check_response_store(_SETTINGS)  # likewise an unwritable GPTOSS_STATE_DIR or unreachable GPTOSS_STATE_URL
# The engine the resources are sized for: the Bento's `engine` argument (bentofile-vllm.yaml's
# `args`, which `bentoml build` sets before importing this module, and a served Bento restores),
# else GPTOSS_ENGINE ('auto' counts as ours; set GPTOSS_ENGINE=vllm for tensor parallelism).
_ENGINE = getattr(bentoml.use_arguments(), "engine", None) or _SETTINGS.engine


@bentoml.service(
    name="gpt-oss",
    http={"port": 8000},
    # Both images keep the experts in MXFP4 (13.8 GB of weights): a 24 GB L4, one per vLLM shard
    # (README's GPU sizing, deploy/README.md).
    resources=service_resources(_SETTINGS, _ENGINE),
    # BentoML's own timeout sits above ours, so a client sees our OpenAI-shaped answer, not a cut.
    traffic={"timeout": _SETTINGS.request_timeout + 30, "concurrency": traffic_concurrency(_SETTINGS)},
    # access_log.py writes one richer line per request (key name, tokens); BentoML's would repeat it.
    logging={"access": {"enabled": False}},
    # BentoML's HTTP metrics label series with the raw request path: anyone could grow /metrics
    # without bound. metrics.py serves ours (bounded labels) on /metrics instead.
    metrics={"enabled": False},
    # BentoML's tracing middleware opens a span for every chunk a response sends, i.e. for every
    # streamed token; the generation routes skip it unless GPTOSS_TRACE_GENERATION asks for it.
    tracing={} if _SETTINGS.trace_generation else {"excluded_urls": list(GENERATION_PATHS)},
)
@bentoml.asgi_app(openai_app, path="/")
class GptOss:
    """gpt-oss behind an OpenAI-compatible API (``/v1``) and a native streaming ``generate`` API."""

    # The checkpoint, pinned in the Bento when GPTOSS_MODEL is a Hub id (None: tiny / a directory).
    hf_model = hf_model_ref(_SETTINGS)

    def __init__(self) -> None:
        settings = get_settings()
        store = validate_auth_config(settings)  # refuse to start without keys (unless explicitly disabled)
        if store is not None:
            # Now rather than at the first request: SIGHUP kills a worker that has no handler yet.
            install_sighup_handler(store)
        self.settings = settings
        self.store = open_response_store(settings)  # stored Responses API responses
        self.encoding = load_encoding(settings.cache_dir)
        text_encoding()  # built now, not on the first large request (it holds the GIL)
        # Loads (and downloads a pinned checkpoint that is not baked in) in the background;
        # /health answers 503 until it is ready.
        self.engine = build_engine(settings, self._checkpoint, grammar_tokenizer=grammar_tokenizer())
        self.engine.start()
        self.gauges = EngineGauges(
            self.engine.stats,
            settings.served_model_name,
            kv_capacity=self.engine.config.kv_cache_tokens,
            weight_bytes=loaded_weight_bytes,
        )
        self.gauges.start()
        self.backend = Backend(
            self.engine,
            self.encoding,
            settings,
            random_weights=settings.is_tiny,
            observer=TokenTimings(settings.served_model_name),
            store=self.store,
        )
        openai_app.state.backend = self.backend  # the mounted API serves from now on

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: 503 until the model is loaded and the engine serves, and again once it drains."""
        return bool(self.engine.serving)

    def _checkpoint(self) -> str | None:
        """The pinned checkpoint's local directory, or None to let the loader resolve GPTOSS_MODEL."""
        ref: Any = type(self).hf_model
        if ref is None:
            return None
        path: str = self.hf_model  # the descriptor resolves it: the Bento's copy, else one download
        logger.info("Checkpoint %s is at %s", ref, path)
        return path

    @bentoml.api
    async def generate(
        self, prompt: str, ctx: bentoml.Context, max_tokens: int = 512, temperature: float = 1.0
    ) -> AsyncGenerator[str, None]:
        """Stream the answer (final channel) to one user message, as text.

        The same chat path as ``/v1/chat/completions`` (validation, key checks, engine, Harmony
        parsing). Errors before the first token answer with their status and an OpenAI-shaped
        body; a text stream cannot carry one after that, so a later failure ends the stream.
        """
        request = ctx.request
        try:
            body = parse_request(
                ChatCompletionRequest,
                {
                    "model": self.settings.served_model_name,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "stream": True,
                },
            )
            job = await start_job(request, self.backend, body, ChatHandler, lambda: prompt)
        except Exception as exc:
            yield _error_response(ctx, exc)
            return
        sent = False
        try:
            async for piece in job.pieces():
                text = piece.delta.get("content")
                if text:
                    sent = True
                    yield text
        except Exception as exc:
            if not sent:  # BentoML has not started the response yet: the error gets its status
                yield _error_response(ctx, exc)
            else:  # a text stream cannot carry an error: log it; the client sees the text end
                logger.warning("generate: the stream ended early: %s", api_error_from(exc).message)
        finally:
            job.cancel()
            finish_job(request, job)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """Let in-flight generations finish within the grace period, then stop the engine and close the store."""
        try:
            await self.engine.shutdown(self.settings.shutdown_grace)
            self.gauges.stop()
        finally:
            await self.store.close()  # after the last request that may write to it


def _error_response(ctx: bentoml.Context, exc: BaseException) -> str:
    """Make the (not yet started) response an OpenAI-shaped error; returns its body.

    BentoML sends ``ctx.response``'s status and headers once the first chunk is there.
    """
    err = api_error_from(exc)
    ctx.response.status_code = err.status
    ctx.response.metadata.update({"content-type": "application/json", **err.headers})
    return json.dumps(err.body())


# Order matters: the first added is the outermost. The access log wraps the rest, so it also
# logs the guard's 404/413 and auth's 401/403/429 answers, and reads the key name that auth
# stores in scope["state"]. The guard answers unknown paths before any key check.
GptOss.add_asgi_middleware(AccessLogMiddleware)
GptOss.add_asgi_middleware(RequestGuardMiddleware)
GptOss.add_asgi_middleware(AuthMiddleware)

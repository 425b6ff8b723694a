"""BentoML wiring only: load the model once, mount the OpenAI app, guard it, start and stop.

    bentoml serve service:GptOss --port 8000
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, AsyncGenerator

import bentoml

from access_log import AccessLogMiddleware, note
from auth import AuthMiddleware, charge_tokens, get_principal, install_sighup_handler, validate_auth_config
from engine_types import GenerationRequest, SamplingParams
from harmony_mapping import ChatStreamParser, render_simple_chat
from harmony_vocab import load_encoding
from loader import build_engine, engine_config
from metrics import EngineGauges, TokenTimings
from openai_compat import app as openai_app
from openai_compat import attach_backend
from serving import Backend, TokenClock
from settings import Settings, configure_logging, get_settings

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


def traffic_concurrency(settings: Settings) -> int:
    """Requests one replica holds at once: engine slots + queue (GPU defaults: 128 + 256 = 384).

    BentoCloud's autoscaler adds replicas beyond it; locally it limits nothing (the engine's
    queue answers 429 when full).
    """
    config = engine_config(settings, "cuda")
    return config.max_running + config.max_queued


# Secure by default: without keys (and without GPTOSS_AUTH_DISABLED) `bentoml serve` exits at
# once with how to add one, instead of letting BentoML restart a failing worker forever.
# `bentoml build` imports this module too and needs no keys.
_SETTINGS = get_settings()
configure_logging(_SETTINGS)
if "build" not in sys.argv[1:3]:
    validate_auth_config(_SETTINGS)


@bentoml.service(
    name="gpt-oss",
    http={"port": 8000},
    # The image runs the experts in bf16 (~42 GB; MXFP4 kernels are not installable yet), so an
    # 80 GB GPU with ~30 GB of KV cache; with MXFP4 a 24 GB L4 would do (deploy/README.md).
    resources={"gpu": 1, "gpu_type": _SETTINGS.gpu_type},
    traffic={"timeout": 600, "concurrency": traffic_concurrency(_SETTINGS)},
    # access_log.py writes one richer line per request (key name, tokens); BentoML's would repeat it.
    logging={"access": {"enabled": False}},
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
        self.encoding = load_encoding(settings.cache_dir)
        # Loads (and downloads a pinned checkpoint that is not baked in) in the background;
        # /health answers 503 until it is ready.
        self.engine = build_engine(settings, self._checkpoint)
        self.engine.start()
        self.gauges = EngineGauges(
            self.engine.stats, settings.served_model_name, kv_capacity=self.engine.config.kv_cache_tokens
        )
        self.gauges.start()
        self.observer = TokenTimings(settings.served_model_name)
        attach_backend(
            Backend(self.engine, self.encoding, settings, random_weights=settings.is_tiny, observer=self.observer)
        )

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
        """Stream the answer (final channel) to one user message, as text."""
        principal = get_principal(ctx.request)
        note(ctx.request, model=self.settings.served_model_name, stream=True)
        rendered = render_simple_chat(prompt, encoding=self.encoding)
        room = self.engine.max_context - len(rendered.prompt_ids)
        if room < 1:
            raise bentoml.exceptions.InvalidArgument("prompt is longer than the context window")
        params = SamplingParams(
            max_tokens=max(1, min(max_tokens, room)),
            temperature=max(0.0, temperature),
            stop_token_ids=rendered.stop_token_ids,
        )
        key_name = principal.name if principal is not None else None
        stream = self.engine.submit(GenerationRequest(rendered.prompt_ids, params, key_name=key_name))
        clock = TokenClock(self.observer)
        parser = ChatStreamParser(self.encoding, prefill_ids=rendered.prefill_ids)
        generated = 0
        try:
            async for ev in stream:
                if ev.token_id >= 0:
                    clock.tick()
                generated += ev.token_id >= 0
                deltas = parser.feed(ev.token_id) if ev.token_id >= 0 else []
                if ev.finish_reason is not None:
                    deltas += parser.finish(ev.finish_reason)
                text = "".join(d.text for d in deltas if d.kind == "content")
                if text:
                    yield text
        finally:
            stream.cancel()
            charge_tokens(principal, len(rendered.prompt_ids) + generated)
            note(ctx.request, prompt_tokens=len(rendered.prompt_ids), completion_tokens=generated)

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """Let in-flight generations finish within the grace period, then stop the engine."""
        await self.engine.shutdown(self.settings.shutdown_grace)
        self.gauges.stop()


# Order matters: the first added is the outermost. The access log wraps auth, so it also logs
# 401/403/429 answers and reads the key name that auth stores in scope["state"].
GptOss.add_asgi_middleware(AccessLogMiddleware)
GptOss.add_asgi_middleware(AuthMiddleware)

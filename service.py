"""BentoML wiring only: load the model once, mount the OpenAI app, guard it, start and stop.

    bentoml serve service:GptOss --port 8000
"""

from __future__ import annotations

import logging
import sys
from typing import AsyncGenerator

import bentoml

from auth import AuthMiddleware, charge_tokens, get_principal, validate_auth_config
from engine import Engine
from engine_types import GenerationRequest, SamplingParams
from harmony_mapping import ChatStreamParser, render_simple_chat
from harmony_vocab import load_encoding
from loader import engine_config, load_model, pick_device
from openai_compat import app as openai_app
from openai_compat import attach_backend
from serving import Backend
from settings import configure_logging, get_settings

logger = logging.getLogger("gptoss")

# Secure by default: without keys (and without GPTOSS_AUTH_DISABLED) `bentoml serve` exits at
# once with how to add one, instead of letting BentoML restart a failing worker forever.
# `bentoml build` imports this module too and needs no keys.
configure_logging(get_settings())
if "build" not in sys.argv[1:3]:
    validate_auth_config(get_settings())

@bentoml.service(
    name="gpt-oss",
    http={"port": 8000},
    traffic={"timeout": 600, "concurrency": 512},
)
@bentoml.asgi_app(openai_app, path="/")
class GptOss:
    """gpt-oss behind an OpenAI-compatible API (``/v1``) and a native streaming ``generate`` API."""

    def __init__(self) -> None:
        settings = get_settings()
        validate_auth_config(settings)  # refuse to start without keys (unless explicitly disabled)
        self.settings = settings
        self.encoding = load_encoding(settings.cache_dir)
        device = pick_device(settings)
        self.engine = Engine(lambda: load_model(settings), engine_config(settings, device))
        self.engine.start()  # loads on the engine thread; /health answers 503 until ready
        attach_backend(Backend(self.engine, self.encoding, settings, random_weights=settings.is_tiny))

    @bentoml.api
    async def generate(
        self, prompt: str, ctx: bentoml.Context, max_tokens: int = 512, temperature: float = 1.0
    ) -> AsyncGenerator[str, None]:
        """Stream the answer (final channel) to one user message, as text."""
        principal = get_principal(ctx.request)
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
        parser = ChatStreamParser(self.encoding, prefill_ids=rendered.prefill_ids)
        generated = 0
        try:
            async for ev in stream:
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

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """Let in-flight generations finish within the grace period, then stop the engine."""
        await self.engine.shutdown(self.settings.shutdown_grace)


GptOss.add_asgi_middleware(AuthMiddleware)

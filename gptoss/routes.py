"""Every HTTP route this server answers, in one table: who may call it and how it is counted.

The request guard answers 404 for anything not here, before any key check, so a client never
learns more from a scoped key than from no key. Probes are open; docs and metrics are open only
when the settings say so; every other route needs a key with the route's permission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Access = Literal["key", "probe", "docs", "metrics"]


@dataclass(frozen=True)
class Route:
    path: str  # exact path, or a prefix ending in "/" when ``prefix``
    access: Access
    permission: str | None = None  # what a key needs ("key" routes); None = any valid key
    prefix: bool = False
    label: str | None = None  # the metrics ``endpoint`` label; None = the path
    streams: bool = False  # generates tokens (and may stream them, a chunk per token)

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) and len(path) > len(self.path) if self.prefix else path == self.path

    @property
    def endpoint(self) -> str:
        return self.label or self.path


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", "key", "chat", streams=True),
    Route("/v1/completions", "key", "completions", streams=True),
    Route("/v1/responses", "key", "responses", streams=True),
    Route("/v1/responses/", "key", "responses", prefix=True, label="/v1/responses/{id}"),
    Route("/v1/models", "key", "models"),
    Route("/v1/models/", "key", "models", prefix=True, label="/v1/models/{model}"),
    Route("/generate", "key", "generate", streams=True),
    Route("/health", "probe"),
    Route("/healthz", "probe"),
    Route("/livez", "probe"),
    Route("/readyz", "probe"),
    Route("/metrics", "metrics"),
    Route("/docs", "docs"),
    Route("/redoc", "docs"),
    Route("/openapi.json", "docs"),
    Route("/docs.json", "docs"),  # BentoML's schema of the native API
    Route("/", "docs"),  # BentoML's UI for the native API
    Route("/static_content/", "docs", prefix=True),
    Route("/assets/", "docs", prefix=True),
    Route("/schema.json", "key"),  # BentoML's Python client reads it first
)


#: The routes that generate: BentoML's per-chunk tracing spans are left off them unless asked for.
GENERATION_PATHS: tuple[str, ...] = tuple(r.path for r in ROUTES if r.streams)


def find_route(path: str) -> Route | None:
    """The route serving ``path`` (as the ASGI scope has it), or None: the server answers 404."""
    for route in ROUTES:
        if route.matches(path):
            return route
    return None

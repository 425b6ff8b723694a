"""Prometheus metrics (prefix ``gptoss_``), served on BentoML's ``/metrics`` next to its own.

BentoML runs ``prometheus_client`` in multiprocess mode: each worker writes its samples to files
under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` merges them. So the metrics are created
lazily, in the worker (``get_metrics()``), never at import time: ``bentoml serve`` also imports
service.py in the arbiter, which has no multiprocess directory. Gauges say how to merge
workers (``livesum``: the sum over live workers, each with its own engine).

Label cardinality stays bounded: keys are named in the keys file (and exported only with
``GPTOSS_METRICS_KEY_NAMES``), the model is the one served, endpoints are the routes table's
(anything else is ``other``). BentoML's own HTTP metrics, which label every series with the raw
request path, are turned off in service.py; this module serves ``/metrics`` itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gptoss.routes import find_route

logger = logging.getLogger(__name__)

# Time to first token: from a fraction of a second (short prompt, idle GPU) to minutes (long
# prompt on CPU, deep queue).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
# Inter-token latency: one batched decode step, milliseconds on a GPU, more on CPU.
ITL_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)

NO_KEY = "anonymous"  # key label when authentication is disabled or the key is unknown
HIDDEN_KEY = "-"  # key label when key names are not exported (GPTOSS_METRICS_KEY_NAMES=false)


def endpoint_label(path: str) -> str:
    """A bounded ``endpoint`` label for a request path: its API route's, else ``other``."""
    route = find_route(path)
    return route.endpoint if route is not None and route.access == "key" else "other"


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker's metrics (multiprocess mode under BentoML) and its type."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prom.REGISTRY
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST


@dataclass
class Metrics:
    """The project's metric families (deploy/README.md, Monitoring, lists them)."""

    prompt_tokens: Any
    generation_tokens: Any
    requests: Any
    ttft: Any
    itl: Any
    queue_depth: Any
    running: Any
    kv_cache_tokens: Any
    kv_cache_capacity: Any
    model_weight_bytes: Any

    @classmethod
    def create(cls, registry: Any = None) -> Metrics:
        """Register the families in ``registry`` (prometheus_client's default when None)."""
        import prometheus_client as prom  # imported here: after PROMETHEUS_MULTIPROC_DIR is set

        reg = {"registry": registry} if registry is not None else {}
        return cls(
            prompt_tokens=prom.Counter(
                "gptoss_prompt_tokens", "Prompt tokens processed, by API key name and model.", ["key", "model"], **reg
            ),
            generation_tokens=prom.Counter(
                "gptoss_generation_tokens", "Tokens generated, by API key name and model.", ["key", "model"], **reg
            ),
            requests=prom.Counter(
                "gptoss_requests", "API requests answered, by endpoint and HTTP status.", ["endpoint", "status"], **reg
            ),
            ttft=prom.Histogram(
                "gptoss_time_to_first_token_seconds",
                "Seconds from submitting a choice to the engine to its first token.",
                ["model"],
                buckets=TTFT_BUCKETS,
                **reg,
            ),
            itl=prom.Histogram(
                "gptoss_inter_token_latency_seconds",
                "Seconds between consecutive tokens of one choice.",
                ["model"],
                buckets=ITL_BUCKETS,
                **reg,
            ),
            queue_depth=prom.Gauge(
                "gptoss_queue_depth", "Requests waiting for an engine slot.", ["model"],
                multiprocess_mode="livesum", **reg,
            ),
            running=prom.Gauge(
                "gptoss_running_sequences", "Sequences being decoded in the batch.", ["model"],
                multiprocess_mode="livesum", **reg,
            ),
            kv_cache_tokens=prom.Gauge(
                "gptoss_kv_cache_used_tokens", "Tokens held in the KV cache.", ["model"],
                multiprocess_mode="livesum", **reg,
            ),
            kv_cache_capacity=prom.Gauge(
                "gptoss_kv_cache_capacity_tokens", "KV-cache budget in tokens (GPTOSS_KV_CACHE_TOKENS).", ["model"],
                multiprocess_mode="livesum", **reg,
            ),
            model_weight_bytes=prom.Gauge(
                "gptoss_model_weight_bytes",
                "Bytes of model weights held in memory, by format (mxfp4: the experts' blocks and scales; bf16, ...).",
                ["model", "format"], multiprocess_mode="livesum", **reg,
            ),
        )


_lock = threading.Lock()
_metrics: Metrics | None = None


def get_metrics() -> Metrics:
    """The process-wide metrics, created on first use (in the worker, see the module docstring)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics.create()
        return _metrics


def record_request(
    metrics: Metrics,
    *,
    endpoint: str,
    status: int,
    key: str | None,
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Count one finished request and its tokens."""
    metrics.requests.labels(endpoint_label(endpoint), str(status)).inc()
    if model is None:
        return
    key = key or NO_KEY
    if prompt_tokens > 0:
        metrics.prompt_tokens.labels(key, model).inc(prompt_tokens)
    if completion_tokens > 0:
        metrics.generation_tokens.labels(key, model).inc(completion_tokens)


class TokenTimings:
    """The serving layer's token observer: TTFT and inter-token latency of one model."""

    def __init__(self, model: str, metrics: Metrics | None = None) -> None:
        m = metrics or get_metrics()
        self._ttft = m.ttft.labels(model)
        self._itl = m.itl.labels(model)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)


class EngineGauges:
    """Copies ``Engine.stats()`` into the gauges, every ``interval`` seconds on a daemon thread.

    ``weight_bytes()`` (bytes by format, empty until the model is loaded) fills the weights gauge once.

    A thread rather than the event loop: ``stats()`` takes the engine's lock, which the engine
    thread may hold during a step, and ``/metrics`` must never stall generation or vice versa.
    """

    def __init__(
        self,
        stats: Callable[[], Any],
        model: str,
        *,
        kv_capacity: int | None = None,
        metrics: Metrics | None = None,
        interval: float = 1.0,
        weight_bytes: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        m = metrics or get_metrics()
        self._stats = stats
        self._weight_bytes = weight_bytes
        self._weights = m.model_weight_bytes
        self._model = model
        self._queue = m.queue_depth.labels(model)
        self._running = m.running.labels(model)
        self._kv = m.kv_cache_tokens.labels(model)
        self._kv_capacity = m.kv_cache_capacity.labels(model)
        if kv_capacity:
            self._kv_capacity.set(kv_capacity)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        s = self._stats()
        self._queue.set(s.waiting)
        self._running.set(s.running)
        self._kv.set(s.kv_tokens)
        if getattr(s, "kv_capacity", 0):  # known once the engine has sized it after loading
            self._kv_capacity.set(s.kv_capacity)
        sizes = self._weight_bytes() if self._weight_bytes is not None else None
        if sizes:  # known once the model is loaded, then fixed
            for fmt, n in sizes.items():
                self._weights.labels(self._model, fmt).set(n)
            self._weight_bytes = None

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:  # never let the gauges thread die silently
                    logger.exception("Updating the engine gauges failed; will retry")
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name="gptoss-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

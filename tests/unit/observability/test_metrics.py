"""Prometheus metrics: the pieces on their own, then ``/metrics`` of a real ``bentoml serve``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gptoss.api.common.serving import TokenClock
from gptoss.observability.metrics import EngineGauges, Metrics, TokenTimings, endpoint_label, record_request
from tests.conftest import ADMIN_KEY, CHAT_KEY, RemoteServer

MODEL = "gpt-oss-20b"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text_or_samples: Any, name: str, **labels: str) -> float:
    table = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return table.get((name, tuple(sorted(labels.items()))), 0.0)


# --- units ------------------------------------------------------------------------------------------


@pytest.fixture()
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture()
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics.create(registry)


def test_record_request_counts_tokens_by_key_and_model(metrics: Metrics, registry: CollectorRegistry):
    record_request(metrics, endpoint="/v1/chat/completions", status=200, key="alice", model=MODEL,
                   prompt_tokens=12, completion_tokens=5)
    record_request(metrics, endpoint="/v1/chat/completions", status=200, key="alice", model=MODEL,
                   prompt_tokens=3, completion_tokens=1)
    record_request(metrics, endpoint="/v1/completions", status=200, key=None, model=MODEL,
                   prompt_tokens=4, completion_tokens=0)
    record_request(metrics, endpoint="/v1/models", status=401, key=None, model=None, prompt_tokens=0,
                   completion_tokens=0)
    text = generate_latest(registry).decode()
    assert value(text, "gptoss_prompt_tokens_total", key="alice", model=MODEL) == 15
    assert value(text, "gptoss_generation_tokens_total", key="alice", model=MODEL) == 6
    assert value(text, "gptoss_prompt_tokens_total", key="anonymous", model=MODEL) == 4
    assert value(text, "gptoss_requests_total", endpoint="/v1/chat/completions", status="200") == 2
    assert value(text, "gptoss_requests_total", endpoint="/v1/models", status="401") == 1


@pytest.mark.parametrize(
    "path, label",
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/completions", "/v1/completions"),
        ("/v1/models", "/v1/models"),
        ("/v1/models/gpt-oss-20b", "/v1/models/{model}"),
        ("/generate", "/generate"),
        ("/wp-admin/../etc/passwd", "other"),  # scanners must not create label values
        ("/v1/chat/completions/", "other"),
    ],
)
def test_endpoint_label_is_bounded(path: str, label: str):
    assert endpoint_label(path) == label


def test_token_clock_reports_ttft_then_gaps(metrics: Metrics, registry: CollectorRegistry):
    timings = TokenTimings(MODEL, metrics)
    clock = TokenClock(timings)
    time.sleep(0.02)
    for _ in range(4):
        clock.tick()
    text = generate_latest(registry).decode()
    assert value(text, "gptoss_time_to_first_token_seconds_count", model=MODEL) == 1
    assert value(text, "gptoss_time_to_first_token_seconds_sum", model=MODEL) >= 0.02
    assert value(text, "gptoss_inter_token_latency_seconds_count", model=MODEL) == 3
    assert value(text, "gptoss_inter_token_latency_seconds_bucket", model=MODEL, le="+Inf") == 3


def test_token_clock_without_observer_is_a_no_op():
    clock = TokenClock(None)
    clock.tick()
    clock.tick()
    assert clock.last_at is None


@dataclass
class FakeStats:
    running: int
    waiting: int
    kv_tokens: int


def test_engine_gauges_follow_stats(metrics: Metrics, registry: CollectorRegistry):
    current = FakeStats(running=3, waiting=7, kv_tokens=1234)
    gauges = EngineGauges(lambda: current, MODEL, kv_capacity=4096, metrics=metrics, interval=0.01)
    gauges.refresh()
    text = generate_latest(registry).decode()
    assert value(text, "gptoss_running_sequences", model=MODEL) == 3
    assert value(text, "gptoss_queue_depth", model=MODEL) == 7
    assert value(text, "gptoss_kv_cache_used_tokens", model=MODEL) == 1234
    assert value(text, "gptoss_kv_cache_capacity_tokens", model=MODEL) == 4096

    current = FakeStats(running=0, waiting=0, kv_tokens=0)  # the thread picks up changes by itself
    gauges.start()
    try:
        _wait_for(lambda: value(generate_latest(registry).decode(), "gptoss_queue_depth", model=MODEL) == 0)
    finally:
        gauges.stop()


def test_engine_gauges_thread_survives_errors(metrics: Metrics):
    calls = []

    def stats() -> FakeStats:
        calls.append(1)
        raise RuntimeError("engine busy")

    gauges = EngineGauges(stats, MODEL, metrics=metrics, interval=0.01)
    gauges.start()
    try:
        _wait_for(lambda: len(calls) >= 3)
    finally:
        gauges.stop()


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- through the real server -------------------------------------------------------------------------
# `isolated_server` (not the shared `server`): it has its own BENTOML_HOME, so other `bentoml serve`
# processes started meanwhile (other tests) cannot empty its Prometheus multiprocess directory.


def scrape(server: RemoteServer) -> dict:
    r = httpx.get(server.url("/metrics"), headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert r.status_code == 200
    return samples(r.text)


def _delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_endpoint_has_token_counters_and_latency_histograms(isolated_server: RemoteServer):
    server = isolated_server
    before = scrape(server)
    chat = server.client(ADMIN_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0
    )
    streamed = list(
        server.client(CHAT_KEY).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )
    stream_usage = streamed[-1].usage
    completion = server.client(ADMIN_KEY).completions.create(model=MODEL, prompt="abc", max_tokens=4, temperature=0)

    admin_prompt = chat.usage.prompt_tokens + completion.usage.prompt_tokens
    admin_generated = chat.usage.completion_tokens + completion.usage.completion_tokens

    # Counters are written when each response has fully gone out: poll briefly.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        done = _delta(after, before, "gptoss_generation_tokens_total", key="chatter", model=MODEL) > 0 and _delta(
            after, before, "gptoss_requests_total", endpoint="/v1/completions", status="200"
        ) >= 1
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert _delta(after, before, "gptoss_prompt_tokens_total", key="admin", model=MODEL) == admin_prompt
    assert _delta(after, before, "gptoss_generation_tokens_total", key="admin", model=MODEL) == admin_generated
    assert _delta(after, before, "gptoss_prompt_tokens_total", key="chatter", model=MODEL) == stream_usage.prompt_tokens
    assert (
        _delta(after, before, "gptoss_generation_tokens_total", key="chatter", model=MODEL)
        == stream_usage.completion_tokens
    )
    assert _delta(after, before, "gptoss_requests_total", endpoint="/v1/chat/completions", status="200") == 2
    assert _delta(after, before, "gptoss_requests_total", endpoint="/v1/completions", status="200") == 1

    # One TTFT per choice; one inter-token gap per further token.
    assert _delta(after, before, "gptoss_time_to_first_token_seconds_count", model=MODEL) == 3
    generated = admin_generated + stream_usage.completion_tokens
    assert _delta(after, before, "gptoss_inter_token_latency_seconds_count", model=MODEL) == generated - 3
    assert value(after, "gptoss_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf") >= 3
    assert value(after, "gptoss_inter_token_latency_seconds_bucket", model=MODEL, le="0.05") >= 0

    # Engine gauges are there (idle now); BentoML's HTTP metrics (raw-path labels) are not.
    names = {name for name, _ in after}
    for gauge in ("gptoss_queue_depth", "gptoss_running_sequences", "gptoss_kv_cache_used_tokens"):
        assert (gauge, (("model", MODEL),)) in after, gauge
    assert value(after, "gptoss_kv_cache_capacity_tokens", model=MODEL) > 0
    assert not any(n.startswith("bentoml_") for n in names)


def test_rejected_requests_are_counted_by_status(isolated_server: RemoteServer):
    server = isolated_server
    before = scrape(server)
    r = httpx.get(server.url("/v1/models"), headers={"Authorization": "Bearer sk-not-a-valid-key-000000"}, timeout=10)
    assert r.status_code == 401
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        delta = _delta(after, before, "gptoss_requests_total", endpoint="/v1/models", status="401")
        if delta or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delta == 1


def test_engine_gauges_show_running_sequences(isolated_server: RemoteServer):
    """While a long generation runs, the running-sequences gauge is non-zero."""
    server = isolated_server
    import threading

    done = threading.Event()

    def long_request() -> None:
        try:
            server.client(ADMIN_KEY).completions.create(model=MODEL, prompt="x", max_tokens=600, temperature=0)
        finally:
            done.set()

    t = threading.Thread(target=long_request)
    t.start()
    seen = 0.0
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        seen = max(seen, value(scrape(server), "gptoss_running_sequences", model=MODEL))
        if seen:
            break
        time.sleep(0.1)
    t.join(120)
    assert seen >= 1

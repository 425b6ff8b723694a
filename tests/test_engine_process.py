"""The engine in its own process (the server's default): same answers, cancel, backpressure, lifecycle."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time

import pytest

from engine import Engine, EngineConfig
from engine_process import ProcessEngine
from engine_types import EngineNotReady, EngineOverloaded, EngineShuttingDown, GenerationRequest
from loader import load_model, resolve_model_path
from settings import Settings
from tests.test_engine import PROMPTS, cancel_one_of_two, collect, greedy


@pytest.fixture(scope="module")
def model_path() -> str:
    return resolve_model_path(Settings(model="tiny"))  # built once here, loaded by each child


def make_engine(model_path: str, **cfg) -> ProcessEngine:
    settings = Settings(model="tiny")
    engine = ProcessEngine(lambda: functools.partial(load_model, settings, model_path), EngineConfig(**cfg))
    engine.start()
    assert engine.wait_ready(120)
    return engine


def _failing_loader() -> None:
    raise OSError("no such checkpoint: /nowhere")


async def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_same_tokens_as_the_thread_engine_alone_and_batched(model_path):
    settings = Settings(model="tiny")
    thread = Engine(lambda: load_model(settings, model_path), EngineConfig())
    thread.start()
    thread.wait_ready(60)
    engine = make_engine(model_path)
    try:
        expected = [await collect(thread, p, greedy(20)) for p in PROMPTS]
        alone = [await collect(engine, p, greedy(20)) for p in PROMPTS]
        batched = await asyncio.gather(*(collect(engine, p, greedy(20)) for p in PROMPTS))
        assert alone == expected
        assert batched == expected
        assert await wait_until(lambda: engine.stats().finished == 2 * len(PROMPTS))
        stats = engine.stats()
        assert stats.generated_tokens == 2 * len(PROMPTS) * 20 and stats.running == 0 and stats.waiting == 0
    finally:
        await thread.shutdown(1)
        await engine.shutdown(5)


async def test_cancel_frees_the_slot_and_others_continue(model_path):
    engine = make_engine(model_path)
    try:
        rest, other = await cancel_one_of_two(engine)
        assert rest and rest[-1].finish_reason == "abort"
        assert sum(ev.token_id >= 0 for ev in rest) <= 4  # the steps already on their way
        assert await wait_until(lambda: engine.stats().running == (0 if other.done() else 1))
        assert len(await other) == 30
        assert await wait_until(lambda: engine.stats().running == 0)
    finally:
        await engine.shutdown(5)


async def test_queue_overflow_is_refused(model_path):
    engine = make_engine(model_path, max_running=1, max_queued=2)
    try:
        streams = [engine.submit(GenerationRequest(PROMPTS[2], greedy(100_000)))]
        assert await wait_until(lambda: engine.stats().running == 1)
        streams += [engine.submit(GenerationRequest(PROMPTS[2], greedy(10))) for _ in range(2)]
        assert engine.stats().waiting == 2  # counted before the child has even seen them
        with pytest.raises(EngineOverloaded):
            engine.submit(GenerationRequest(PROMPTS[2], greedy(10)))
        for s in streams:
            s.cancel()
        assert await wait_until(lambda: engine.stats().running == 0 and engine.stats().waiting == 0)
        assert len(await collect(engine, PROMPTS[2], greedy(3))) == 3  # room again
    finally:
        await engine.shutdown(5)


async def test_shutdown_drains_then_the_child_exits(model_path):
    engine = make_engine(model_path)
    # The child ignores SIGTERM and SIGINT: a signal to the whole process group must not cut the drain.
    os.kill(engine.pid, signal.SIGTERM)
    os.kill(engine.pid, signal.SIGINT)
    task = asyncio.create_task(collect(engine, PROMPTS[0], greedy(40)))
    await asyncio.sleep(0.2)
    await engine.shutdown(30)
    assert len(await task) == 40  # finished, not cut off
    assert engine._proc.exitcode == 0
    assert not engine.ready
    with pytest.raises(EngineShuttingDown):
        engine.submit(GenerationRequest(PROMPTS[0], greedy(1)))


async def test_a_dead_child_fails_in_flight_requests_and_health(model_path):
    engine = make_engine(model_path)
    stream = engine.submit(GenerationRequest(PROMPTS[1], greedy(100_000)))
    await stream.__anext__()
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="engine process"):
        async for _ in stream:
            pass
    assert await wait_until(lambda: not engine.ready)
    with pytest.raises(EngineNotReady):
        engine.submit(GenerationRequest(PROMPTS[0], greedy(1)))
    await engine.shutdown(1)


async def test_load_error_is_reported():
    engine = ProcessEngine(lambda: _failing_loader, EngineConfig())
    engine.start()
    with pytest.raises(RuntimeError, match="no such checkpoint"):
        engine.wait_ready(60)
    assert not engine.ready
    await engine.shutdown(1)

"""Fault isolation in the engine: a failure that belongs to one sequence fails that sequence alone.

Requests here bypass the API's validation on purpose (the API refuses these values with a 400):
the engine must survive whatever reaches it. Running neighbours must produce exactly the tokens
they produce alone, and every failed request must get its error promptly (no hang).
"""

from __future__ import annotations

import asyncio

import pytest

import gptoss.engine.runner as model_runner
from gptoss.engine.types import EngineFault, GenerationRequest, SamplingParams, SequenceFailed
from tests.unit.engine.test_engine import PROMPTS, collect, greedy, make_engine

NEIGHBOUR_TOKENS = 40


async def _run_beside(engine, bad: GenerationRequest, delay: float = 0.05):
    """Four greedy neighbours plus ``bad`` submitted once they run; (neighbour tokens, bad outcome, seconds)."""
    neighbours = [asyncio.create_task(collect(engine, p, greedy(NEIGHBOUR_TOKENS))) for p in PROMPTS]
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        outcome: object = [ev async for ev in engine.submit(bad)]
    except Exception as exc:  # the failure, as the route would see it
        outcome = exc
    took = loop.time() - started
    return await asyncio.gather(*neighbours), outcome, took


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=8, logit_bias={99999999999999999999: 1.0}),  # overflows torch.tensor
        SamplingParams(max_tokens=8, temperature=1.0, seed=2**64),  # seed + 1 for a second choice
        SamplingParams(max_tokens=8, temperature=1.0, seed=-(2**63) - 1),
    ],
    ids=["logit_bias_overflow", "seed_overflow", "seed_underflow"],
)
async def test_bad_sampling_params_fail_alone(model, params):
    engine = make_engine(model)
    try:
        alone = [await collect(engine, p, greedy(NEIGHBOUR_TOKENS)) for p in PROMPTS]
        got, outcome, took = await _run_beside(engine, GenerationRequest(list(PROMPTS[0]), params))
        assert isinstance(outcome, SequenceFailed), outcome
        assert took < 1.0
        assert got == alone
        assert await collect(engine, PROMPTS[2], greedy(5)) == alone[2][:5]  # still serving
    finally:
        await engine.shutdown(1)


async def test_prompt_outside_the_vocabulary_fails_alone(model):
    engine = make_engine(model)
    try:
        alone = [await collect(engine, p, greedy(NEIGHBOUR_TOKENS)) for p in PROMPTS]
        bad = GenerationRequest([1, 2, model.config.vocab_size + 5], greedy(4))
        got, outcome, took = await _run_beside(engine, bad)
        assert isinstance(outcome, SequenceFailed) and "prompt token ids" in str(outcome)
        assert took < 1.0 and got == alone
    finally:
        await engine.shutdown(1)


async def test_raising_sampler_fails_only_its_row(model, monkeypatch):
    """A sampler fault in the middle of a running batch: that row leaves, the others go on."""
    real = model_runner._processed_row
    calls = {"n": 0}

    def flaky(row, st):
        if st.params.presence_penalty == 0.5:  # only the victim has this
            calls["n"] += 1
            if calls["n"] >= 3:  # after two good tokens, every time
                raise RuntimeError("injected sampler fault")
        return real(row, st)

    monkeypatch.setattr(model_runner, "_processed_row", flaky)
    engine = make_engine(model)
    try:
        # A seeded sampled neighbour too: its draws must not shift when the batch is re-sampled.
        seeded = SamplingParams(max_tokens=NEIGHBOUR_TOKENS, temperature=1.0, seed=7)
        alone = [await collect(engine, p, greedy(NEIGHBOUR_TOKENS)) for p in PROMPTS]
        alone.append(await collect(engine, PROMPTS[0], seeded))
        victim = GenerationRequest(list(PROMPTS[1]), SamplingParams(max_tokens=30, temperature=0, presence_penalty=0.5))
        events = []
        neighbours = [asyncio.create_task(collect(engine, p, greedy(NEIGHBOUR_TOKENS))) for p in PROMPTS]
        neighbours.append(asyncio.create_task(collect(engine, PROMPTS[0], seeded)))
        await asyncio.sleep(0.05)
        with pytest.raises(SequenceFailed, match="injected sampler fault"):
            async for ev in engine.submit(victim):
                events.append(ev)
        assert len(events) == 2  # the tokens it had before the fault were delivered
        assert await asyncio.gather(*neighbours) == alone
    finally:
        await engine.shutdown(1)


async def test_prefill_fault_fails_only_the_admitted(model, monkeypatch):
    engine = make_engine(model)
    runner = engine._core._runner
    real = runner.prefill_apart

    def failing(prompts):
        if any(p[:3] == [7, 7, 7] for p in prompts):
            raise RuntimeError("injected prefill fault")
        return real(prompts)

    monkeypatch.setattr(runner, "prefill_apart", failing)
    try:
        alone = [await collect(engine, p, greedy(NEIGHBOUR_TOKENS)) for p in PROMPTS]
        got, outcome, took = await _run_beside(engine, GenerationRequest([7, 7, 7, 8], greedy(4)))
        assert isinstance(outcome, SequenceFailed) and took < 1.0
        assert got == alone
    finally:
        await engine.shutdown(1)


async def test_model_step_fault_fails_the_batch_and_nobody_hangs(model, monkeypatch):
    """Only a fault of the model step fails the batch: every request in it gets an error event."""
    engine = make_engine(model)
    runner = engine._core._runner
    real = runner.decode
    state = {"steps": 0}

    def failing(tokens):
        state["steps"] += 1
        if state["steps"] == 5:
            raise RuntimeError("injected decode fault")
        return real(tokens)

    monkeypatch.setattr(runner, "decode", failing)
    try:
        tasks = [asyncio.create_task(collect(engine, p, greedy(NEIGHBOUR_TOKENS))) for p in PROMPTS]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        assert all(isinstance(r, EngineFault) for r in results), results
        # The engine goes on with new requests afterwards.
        assert len(await collect(engine, PROMPTS[2], greedy(6))) == 6
        # The last event reaches the client before the engine thread drops the finished row.
        for _ in range(500):
            if engine.stats().running == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.stats().running == 0
    finally:
        await engine.shutdown(1)


async def test_a_long_prompt_whose_chunked_prefill_cannot_start_fails_alone(model, monkeypatch):
    engine = make_engine(model, max_batched_tokens=64)
    runner = engine._core._runner

    def failing(prompt):
        raise RuntimeError("injected chunk fault")

    monkeypatch.setattr(runner, "start_chunked", failing)
    try:
        alone = [await collect(engine, p, greedy(NEIGHBOUR_TOKENS)) for p in PROMPTS[:3]]
        bad = GenerationRequest(list(range(3000, 3200)), greedy(4))  # 200 tokens: prefilled in chunks
        neighbours = [asyncio.create_task(collect(engine, p, greedy(NEIGHBOUR_TOKENS))) for p in PROMPTS[:3]]
        await asyncio.sleep(0.05)
        with pytest.raises(SequenceFailed, match="injected chunk fault"):
            await asyncio.wait_for(collect(engine, bad.prompt_ids, bad.params), 5)
        assert await asyncio.gather(*neighbours) == alone
    finally:
        await engine.shutdown(1)

"""The engine on the real tiny model: continuous batching, sampling, cancellation, backpressure."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gptoss.engine.core import Engine, EngineConfig
from gptoss.engine.runner import ModelRunner
from gptoss.engine.types import EngineOverloaded, EngineShuttingDown, GenerationRequest, SamplingParams

PROMPTS = [
    [200006, 1428, 200008, 13225, 11, 1495, 553, 481, 30, 200007, 200006, 173781],
    list(range(1000, 1040)),
    [3, 4, 5],
    list(range(5000, 5150)),  # longer than the sliding window (128)
]


def make_engine(model, **cfg) -> Engine:
    engine = Engine(lambda: model, EngineConfig(**cfg), max_context=4096)
    engine.start()
    engine.wait_ready(60)
    return engine


async def collect(engine: Engine, prompt, params: SamplingParams) -> list[int]:
    return [ev.token_id async for ev in engine.submit(GenerationRequest(list(prompt), params))]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


async def test_greedy_alone_equals_batched(model):
    engine = make_engine(model)
    try:
        alone = [await collect(engine, p, greedy(24)) for p in PROMPTS]
        batched = await asyncio.gather(*(collect(engine, p, greedy(24)) for p in PROMPTS))
        assert batched == alone
        assert all(len(t) == 24 for t in alone)
    finally:
        await engine.shutdown(1)


async def test_join_and_leave_mid_flight(model):
    """Requests that join while others run, and leave early, still match their solo output."""
    engine = make_engine(model)
    try:
        alone = [await collect(engine, p, greedy(10 + 7 * i)) for i, p in enumerate(PROMPTS)]

        async def delayed(i: int):
            await asyncio.sleep(0.05 * i)
            return await collect(engine, PROMPTS[i], greedy(10 + 7 * i))

        mixed = await asyncio.gather(*(delayed(i) for i in range(len(PROMPTS))))
        assert mixed == alone
        assert engine.stats().steps > 0
    finally:
        await engine.shutdown(1)


def test_runner_matches_unbatched_forward(model):
    """The merged/trimmed cache gives the same logits as a plain transformers forward."""
    runner = ModelRunner(model)
    runner.prefill([PROMPTS[1]])
    runner.prefill([PROMPTS[2]])
    tok = [7, 8]
    logits = runner.decode(tok)
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor([PROMPTS[2] + [8]])).logits[0, -1].float()
    assert torch.equal(logits[1].argmax(), ref.argmax())
    assert torch.allclose(logits[1].float(), ref, atol=0.1)
    runner.keep_rows([1])
    assert runner.batch.size == 1 and runner.batch.length == len(PROMPTS[2]) + 1


async def test_seed_reproducible_alone_and_batched(model):
    engine = make_engine(model)
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=42)
    try:
        a = await collect(engine, PROMPTS[0], params)
        b, _, _ = await asyncio.gather(
            collect(engine, PROMPTS[0], params),
            collect(engine, PROMPTS[1], SamplingParams(max_tokens=16, temperature=1.0)),
            collect(engine, PROMPTS[2], greedy(16)),
        )
        assert a == b
        c = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=43))
        assert c != a
    finally:
        await engine.shutdown(1)


async def test_stop_token_and_length_finish(model):
    engine = make_engine(model)
    try:
        first = (await collect(engine, PROMPTS[0], greedy(3)))[1]
        events = [
            ev
            async for ev in engine.submit(
                GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=50, temperature=0.0, stop_token_ids=(first,)))
            )
        ]
        assert events[-1].finish_reason == "stop" and events[-1].token_id == first
        assert len(events) == 2
        events = [ev async for ev in engine.submit(GenerationRequest(PROMPTS[0], greedy(5)))]
        assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    finally:
        await engine.shutdown(1)


async def cancel_one_of_two(engine) -> tuple[list, asyncio.Task]:
    """Start an endless request and a 30-token one; cancel the first after 5 tokens.

    Returns the events the cancelled stream still yields, and the other request's task.
    """
    stream = engine.submit(GenerationRequest(PROMPTS[1], greedy(100000)))
    other = asyncio.create_task(collect(engine, PROMPTS[2], greedy(30)))
    got = 0
    async for _ in stream:
        got += 1
        if got == 5:
            break
    assert engine.stats().running >= 1
    stream.ready_events()  # tokens delivered before the cancel
    stream.cancel()
    return [ev async for ev in stream], other


async def test_cancel_frees_slot_within_a_step(model):
    engine = make_engine(model)
    try:
        rest, other = await cancel_one_of_two(engine)
        # Ends as aborted, after at most the step in flight (plus one whose delivery was queued).
        assert rest and rest[-1].finish_reason == "abort"
        assert sum(ev.token_id >= 0 for ev in rest) <= 2
        for _ in range(200):  # and the slot is free: only the other request may still run
            if engine.stats().running == (0 if other.done() else 1):
                break
            await asyncio.sleep(0.01)
        assert engine.stats().running == (0 if other.done() else 1)
        assert len(await other) == 30  # the other request kept being served
    finally:
        await engine.shutdown(1)


async def test_queue_overflow_is_refused(model):
    engine = make_engine(model, max_running=1, max_queued=2)
    try:
        streams = [engine.submit(GenerationRequest(PROMPTS[2], greedy(100000)))]
        while engine.stats().running == 0:
            await asyncio.sleep(0.01)
        streams += [engine.submit(GenerationRequest(PROMPTS[2], greedy(10))) for _ in range(2)]
        assert engine.stats().waiting == 2
        with pytest.raises(EngineOverloaded):
            engine.submit(GenerationRequest(PROMPTS[2], greedy(10)))
        for s in streams:
            s.cancel()
    finally:
        await engine.shutdown(1)


async def test_shutdown_drains_in_flight(model):
    engine = make_engine(model)
    task = asyncio.create_task(collect(engine, PROMPTS[0], greedy(40)))
    await asyncio.sleep(0.05)
    await engine.shutdown(30)
    tokens = await task
    assert len(tokens) == 40  # finished, not cut off
    with pytest.raises(EngineShuttingDown):
        engine.submit(GenerationRequest(PROMPTS[0], greedy(1)))


async def test_penalties_and_logit_bias_change_output(model):
    engine = make_engine(model)
    try:
        base = await collect(engine, PROMPTS[0], greedy(8))
        forced = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0, logit_bias={42: 100.0}))
        assert forced == [42] * 8
        banned = await collect(
            engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0, logit_bias={base[0]: -100.0})
        )
        assert banned[0] != base[0]
        rep = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0, logit_bias={42: 100.0}, frequency_penalty=2.0, presence_penalty=2.0))
        assert rep[0] == 42  # the penalty applies to tokens already generated
    finally:
        await engine.shutdown(1)


async def test_logprobs_shape(model):
    engine = make_engine(model)
    try:
        events = [
            ev
            async for ev in engine.submit(
                GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0, logprobs=5))
            )
        ]
        for ev in events:
            assert ev.logprob is not None and ev.logprob <= 0
            assert len(ev.top_logprobs) == 5
            assert ev.top_logprobs[0][0] == ev.token_id  # greedy picks the most likely token
    finally:
        await engine.shutdown(1)


async def test_long_prompt_is_prefilled_in_chunks_without_stalling_others(model):
    """A prompt over the per-step budget is prefilled a chunk per step; results are unchanged."""
    long_prompt = list(range(2000, 2300))
    ref_engine = make_engine(model)
    try:
        alone = await collect(ref_engine, long_prompt, greedy(6))
        short_alone = await collect(ref_engine, PROMPTS[2], greedy(12))
    finally:
        await ref_engine.shutdown(1)
    engine = make_engine(model, max_batched_tokens=64)
    try:
        short = asyncio.create_task(collect(engine, PROMPTS[2], greedy(12)))
        await asyncio.sleep(0.05)
        steps_before = engine.stats().steps
        got = await collect(engine, long_prompt, greedy(6))
        assert got == alone
        assert engine.stats().steps - steps_before >= 300 // 64  # took several steps
        assert await short == short_alone
    finally:
        await engine.shutdown(1)


async def test_top_k_and_min_p_narrow_sampling(model):
    """top_k=1 and min_p=1 leave only the most likely token: sampling then equals greedy."""
    engine = make_engine(model)
    try:
        base = await collect(engine, PROMPTS[0], greedy(8))
        assert await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=1.5, top_k=1)) == base
        assert await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=1.5, min_p=1.0)) == base
        assert await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=1.0, top_p=1e-9)) == base
        wide = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=8, temperature=1.5, top_k=50, seed=3))
        assert wide != base
    finally:
        await engine.shutdown(1)


async def test_kv_budget_sized_after_loading_when_unset(model):
    from gptoss.engine.runner import default_kv_budget
    from gptoss.engine.types import DEFAULT_CPU_KV_TOKENS as CPU_KV_BUDGET

    assert default_kv_budget(model) == CPU_KV_BUDGET  # the tiny model is on the CPU
    engine = make_engine(model, kv_cache_tokens=0)
    try:
        assert engine.stats().kv_capacity == CPU_KV_BUDGET
        assert len(await collect(engine, PROMPTS[2], greedy(3))) == 3
    finally:
        await engine.shutdown(1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [201088, 1000, 257])
def test_greedy_argmax_matches_max_including_ties(dtype, vocab):
    from gptoss.engine.runner import greedy_argmax

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(12, vocab, generator=gen).to(dtype)
    rows[1, [3, vocab - 1]] = 100.0  # a tie across blocks: the first index wins
    rows[2, [vocab // 2, vocab // 2 + 1]] = 100.0  # a tie inside one block
    rows[3] = 0.0  # all equal
    rows[4, vocab - 1] = 100.0  # the last element
    # bf16 rows are compared as int16 bit patterns only when every row's maximum is positive:
    rows[5] = -rows[5].abs() - 1.0  # all negative (the int16 order is reversed there)
    rows[6, [7, vocab - 2]] = float("inf")  # +inf, tied
    rows[7] = -rows[7].abs()  # negatives with large int16 patterns ...
    rows[7, vocab - 3] = 1e-30  # ... and one tiny positive maximum
    rows[8] = -rows[8].abs()
    rows[8, [5, vocab // 3]] = 0.0  # the maximum is zero, and -0.0 equals it (first one wins)
    rows[8, 2] = -0.0
    rows[9, 0] = -0.0
    rows[9, 1:] = -1.0  # -0.0 first: the maximum
    rows[10] = rows[10].abs() + 1e-3  # all positive
    rows[11, vocab // 4] = 3e38  # near the largest finite value
    rows[0, vocab // 5] = float("nan")  # NaN wins max(), the first one of several
    if dtype == torch.bfloat16:  # a later positive NaN with higher bits must not win instead
        rows.view(torch.int16)[0, vocab // 5 + 1] = 0x7FFF
    expected = rows.max(dim=-1).indices
    assert torch.equal(greedy_argmax(rows), expected)
    assert [int(greedy_argmax(rows[i : i + 1])) for i in range(len(rows))] == expected.tolist()
    assert greedy_argmax(rows[1:2]).tolist() == [3]
    assert greedy_argmax(rows[3:4]).tolist() == [0]


async def test_a_long_prompt_being_prefilled_counts_against_the_kv_budget(model):
    """While a long prompt is prefilled in chunks, admissions leave room for its row."""
    engine = make_engine(model, kv_cache_tokens=300, max_batched_tokens=16)
    long_prompt = list(range(3000, 3199))  # 199 tokens: 13 chunks of 16
    seen: list[int] = []
    try:
        tasks = [asyncio.create_task(collect(engine, long_prompt, greedy(8)))]
        tasks += [asyncio.create_task(collect(engine, p[:10], greedy(40))) for p in PROMPTS]
        while not all(t.done() for t in tasks):
            seen.append(engine.stats().kv_tokens)
            await asyncio.sleep(0.001)
        assert [len(t.result()) for t in tasks] == [8] + [40] * 4
        # One row of the long prompt and its tokens fit; five rows padded to its length (995) do not.
        assert max(seen) <= 300
    finally:
        await engine.shutdown(1)

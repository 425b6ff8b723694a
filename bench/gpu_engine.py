"""Our engine on a GPU: a full-size gpt-oss-20b config with random bf16 weights made on the device.

No checkpoint is read (the GPU host has no network): the model is built from gpt-oss-20b's
config with random weights, directly on the device, then goes through the same
``loader.prepare_model`` and engine configuration as a served checkpoint. Measures, in one run:

* raw ``model.generate`` (greedy, static batch of 1 and of N): the no-server baseline;
* the default thread engine at each stream count: output tokens/s, TTFT p50/p95, latency
  p50/p95, decode steps/s, and the event loop's lag p99 (what /health would wait behind);
* the same with ``GPTOSS_GQA_ATTENTION`` off (transformers' eager attention), same model;
* whether stream 0's greedy tokens are the same alone and batched.

    python bench/gpu_engine.py                          # on the GPU host (see docs/performance.md)
    python bench/gpu_engine.py --shape bench --streams 1,4 --max-tokens 16   # a CPU dry run

On a CPU the engine phases understate a served engine: the model
is built and run on the main thread first, and OpenMP teams for two threads exceed the cores
(libgomp then spin-waits less between ops). The server runs all torch work on its engine thread.

Not a test: figures depend on the machine. Results go to stdout and, with --out, to a JSON file
rewritten after each phase (so a run cut short still leaves what it measured).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchmark import _pct  # noqa: E402  (the served benchmark's percentile; found through sys.path above)

logger = logging.getLogger("bench.gpu")

# gpt-oss-20b's config.json: what differs from GptOssConfig's defaults (the 120b's), and its
# special token ids. "bench" is the CPU benchmark's shape, for a dry run off the GPU.
SHAPE_20B = dict(num_hidden_layers=24, num_local_experts=32)
SPECIALS = dict(pad_token_id=199999, eos_token_id=200002, bos_token_id=199998)


def shape_config(shape: str) -> dict[str, Any]:
    if shape == "20b":
        return SHAPE_20B
    # tiny_model needs openai-harmony, which the GPU host lacks: imported only off it.
    from gptoss.engine.tiny_model import SHAPES

    return SHAPES[shape]


def build_random_model(shape: str, seed: int = 0) -> Any:
    """gpt-oss of the given shape, random bf16 weights created on the device, kernels applied."""
    import torch
    from transformers import AutoModelForCausalLM, GptOssConfig

    from gptoss.engine.loader import pick_device, prepare_model
    from gptoss.settings import get_settings

    settings = get_settings()
    device = pick_device(settings)
    config = GptOssConfig(**shape_config(shape), **SPECIALS)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    prepare_model(model, settings, device)
    if device == "cuda":
        torch.cuda.synchronize()
    n = sum(p.numel() for p in model.parameters())
    logger.info(
        "Built %s model on %s: %.2fB params in %.1f s; attention=%s experts=%s",
        shape, device, n / 1e9, time.perf_counter() - t0,
        model.config._attn_implementation, getattr(model.config, "_experts_implementation", None),
    )
    return model


def make_prompts(n: int, length: int, seed: int = 7) -> list[list[int]]:
    """Distinct random prompts (ordinary tokens only), so each row routes its own experts."""
    rng = random.Random(seed)
    return [[rng.randrange(0, 199_998) for _ in range(length)] for _ in range(n)]


async def _loop_lag(stop: asyncio.Event, out: list[float]) -> None:
    """How late a 10 ms timer fires: the wait a /health request would see on this loop."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        out.append(time.perf_counter() - t - 0.01)


async def drive(
    engine: Any, prompts: list[list[int]], max_tokens: int, probe: bool = True, temperature: float = 0.0
) -> dict[str, Any]:
    """Submit every prompt at once; stream all of them to the end (fixed length; greedy by default)."""
    from gptoss.engine.types import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0 if temperature else None)
    stop, lags = asyncio.Event(), []
    lag_task = asyncio.create_task(_loop_lag(stop, lags) if probe else stop.wait())
    steps0 = engine.stats().steps
    t0 = time.perf_counter()

    async def one(prompt: list[int]) -> tuple[float, float, list[int]]:
        first = None
        tokens: list[int] = []
        async for ev in engine.submit(GenerationRequest(prompt_ids=prompt, params=params)):
            if ev.token_id >= 0:
                tokens.append(ev.token_id)
                first = first or time.perf_counter()
            if ev.finish_reason is not None:
                break
        return (first or time.perf_counter()) - t0, time.perf_counter() - t0, tokens

    done = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    stop.set()
    await lag_task
    steps = engine.stats().steps - steps0
    ttft = [d[0] for d in done]
    lat = [d[1] for d in done]
    n_tokens = sum(len(d[2]) for d in done)
    return {
        "streams": len(prompts),
        "tokens": n_tokens,
        "wall_s": round(wall, 3),
        "tok_s": round(n_tokens / wall, 1),
        "ttft_p50": round(_pct(ttft, 0.5), 4),
        "ttft_p95": round(_pct(ttft, 0.95), 4),
        "lat_p50": round(_pct(lat, 0.5), 3),
        "lat_p95": round(_pct(lat, 0.95), 3),
        "steps_per_s": round(steps / wall, 1),
        "loop_lag_p99_ms": round(1000 * _pct(lags, 0.99), 2),
        "first_tokens": done[0][2],
    }


async def sampling_check(engine: Any, prompt: list[int]) -> dict[str, Any]:
    """Every sampler feature in one batch on this device; two same-seed rows must agree."""
    from gptoss.engine.types import GenerationRequest, SamplingParams

    seeded = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=42, presence_penalty=0.5)
    params = [
        seeded,
        seeded,
        SamplingParams(max_tokens=16, temperature=1.0, top_k=50, min_p=0.05, frequency_penalty=0.3, logprobs=2),
        SamplingParams(max_tokens=16, temperature=0.0, repetition_penalty=1.2, logit_bias={100: 5.0}),
    ]

    async def one(p: SamplingParams) -> tuple[list[int], int]:
        toks, with_logprobs = [], 0
        async for ev in engine.submit(GenerationRequest(prompt_ids=prompt, params=p)):
            if ev.token_id >= 0:
                toks.append(ev.token_id)
                with_logprobs += ev.logprob is not None and ev.top_logprobs is not None
        return toks, with_logprobs

    done = await asyncio.gather(*(one(p) for p in params))
    return {
        "tokens_per_row": [len(t) for t, _ in done],
        "same_seed_rows_agree": done[0][0] == done[1][0],
        "logprob_events": done[2][1],
    }


def run_engine(
    engine: Any, levels: list[int], prompts: list[list[int]], max_tokens: int, check_sampling: bool = False,
    probe: bool = True, temperature: float = 0.0,
) -> list[dict[str, Any]]:
    """Warm up, then one measured run per stream count; the engine is shut down at the end."""

    async def main() -> list[dict[str, Any]]:
        await drive(engine, prompts[:2], 8)  # kernels, cuBLAS handles and allocator warm-up
        out = []
        for n in levels:
            r = await drive(engine, prompts[:n], max_tokens, probe, temperature)
            logger.info("  %3d streams: %s", n, {k: v for k, v in r.items() if k != "first_tokens"})
            out.append(r)
        if check_sampling:
            r = await sampling_check(engine, prompts[0])
            logger.info("  sampling check: %s", r)
            out.append({"streams": 0, "sampling_check": r})
        await engine.shutdown(grace=5.0)
        return out

    return asyncio.run(main())


def bench_generate(model: Any, levels: list[int], prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    """Raw ``model.generate``, greedy, a static batch of equal-length prompts (no server, no padding).

    Stock transformers: experts on ``grouped_mm``, which ``generate`` itself switches to
    ``batched_mm`` for decoding on GPU (gpu_kernels.py's step-sized choice is set aside here).
    """
    chosen = model.config._experts_implementation
    if chosen != "eager":
        model.set_experts_implementation("grouped_mm")
    try:
        return _generate_runs(model, levels, prompts, max_tokens)
    finally:
        model.set_experts_implementation(chosen)


def _generate_runs(model: Any, levels: list[int], prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    import torch

    device = next(model.parameters()).device
    out = []
    for n in [1, *levels] if 1 not in levels else levels:
        ids = torch.tensor(prompts[:n], device=device)
        kw = dict(do_sample=False, pad_token_id=SPECIALS["pad_token_id"], eos_token_id=None)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        n_tokens = (gen.shape[1] - ids.shape[1]) * n
        r = {"streams": n, "tokens": n_tokens, "wall_s": round(wall, 3), "tok_s": round(n_tokens / wall, 1),
             "first_tokens": gen[0, ids.shape[1]:].tolist()}
        logger.info("  generate batch %3d: %.1f tok/s", n, r["tok_s"])
        out.append(r)
    return out


def bench_runner(
    model: Any, levels: list[int], prompts: list[list[int]], steps: int, experts: str | None = None
) -> list[dict[str, Any]]:
    """Decode steps straight through ModelRunner (no engine, no threads, no event loop).

    Separates what a step costs the model call from what the engine and its threads add.
    """
    from gptoss.engine.runner import ModelRunner, greedy_argmax

    out = []
    for n in levels:
        runner = ModelRunner(model)
        toks = greedy_argmax(runner.prefill(prompts[:n])).tolist()
        chosen = model.config._experts_implementation
        if experts:  # decode steps only: batched_mm on a whole prompt would copy GBs of weights
            model.set_experts_implementation(experts)
        for _ in range(4):
            toks = greedy_argmax(runner.decode(toks)).tolist()
        t0 = time.perf_counter()
        for _ in range(steps):
            toks = greedy_argmax(runner.decode(toks)).tolist()
        ms = 1000 * (time.perf_counter() - t0) / steps
        model.set_experts_implementation(chosen)
        out.append(
            {"streams": n, "step_ms": round(ms, 2), "tok_s": round(1000 * n / ms, 1), "lean_decode": runner.lean_decode}
        )
        logger.info("  runner %3d rows: %.2f ms/step (lean decode %s)", n, ms, "on" if runner.lean_decode else "off")
    return out


def profile_tables(model: Any, prompt: list[int], out_dir: Path) -> None:
    """CPU-side op tables for 5 decode steps at one row: ModelRunner vs ``model.generate``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gptoss.engine.runner import ModelRunner, greedy_argmax

    runner = ModelRunner(model)
    toks = greedy_argmax(runner.prefill([prompt])).tolist()
    for _ in range(3):
        toks = greedy_argmax(runner.decode(toks)).tolist()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            toks = greedy_argmax(runner.decode(toks)).tolist()
    tables = {"runner": prof}
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    kw = dict(do_sample=False, pad_token_id=SPECIALS["pad_token_id"], eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.generate(ids, max_new_tokens=6, min_new_tokens=6, **kw)
    tables["generate"] = prof
    for name, prof in tables.items():
        text = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        (out_dir / f"profile_{name}_{model.config._attn_implementation}.txt").write_text(text)


def thread_engine(model: Any, settings: Any, device: str) -> Any:
    """The default engine front end over an already built model, started and ready."""
    from gptoss.engine.core import Engine
    from gptoss.engine.loader import engine_config

    engine = Engine(functools.partial(lambda m: m, model), engine_config(settings, device))
    engine.start()
    engine.wait_ready()
    return engine


def _agreement(a: list[int], b: list[int]) -> str:
    """How many leading tokens two greedy runs share, as 'same/total'."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return f"{n}/{len(b)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["20b", "bench"], default="20b")
    ap.add_argument("--streams", default="1,32", help="comma-separated concurrent stream counts")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--phases", default="generate,thread,eager",
                    help="which of generate, runner, profile, experts, thread, sampled (T=1), quiet, eager (GQA off) "
                    "to run; runner/profile/experts/quiet break a step's cost down (no engine / op tables / "
                    "grouped_mm vs batched_mm by rows / no lag probe)")
    ap.add_argument("--runner-steps", type=int, default=64)
    ap.add_argument("--sweep", default="1,2,4,8,16,32", help="rows per decode step for the experts phase")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file, rewritten after each phase")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import torch

    import gptoss.settings as settings_mod
    from gptoss.engine.loader import pick_device

    levels = [int(x) for x in args.streams.split(",")]
    phases = args.phases.split(",")
    sweep = [int(x) for x in args.sweep.split(",")]
    prompts = make_prompts(max(levels + sweep), args.prompt_len)
    settings = settings_mod.get_settings()
    device = pick_device(settings)
    results: dict[str, Any] = {
        "shape": args.shape, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
        "torch": torch.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
    }
    import transformers

    results["transformers"] = transformers.__version__

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))

    model = build_random_model(args.shape)
    results["attention"] = model.config._attn_implementation
    results["experts"] = getattr(model.config, "_experts_implementation", None)
    if device == "cuda":
        results["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 1)
    save()
    if "generate" in phases:
        logger.info("Raw model.generate")
        results["generate"] = bench_generate(model, levels, prompts, args.max_tokens)
        save()
    if "runner" in phases:
        logger.info("ModelRunner decode steps, attention=%s", model.config._attn_implementation)
        results["runner"] = bench_runner(model, levels, prompts, args.runner_steps)
        save()
    if "profile" in phases and args.out:
        profile_tables(model, prompts[0], args.out.parent)
    if "experts" in phases:
        results["experts_sweep"] = {}
        for impl in ("grouped_mm", "batched_mm"):
            logger.info("ModelRunner decode steps, experts=%s", impl)
            results["experts_sweep"][impl] = bench_runner(model, sweep, prompts, args.runner_steps, impl)
            save()
    if "sampled" in phases:
        logger.info("Thread engine, every request sampled at temperature 1 (what clients get by default)")
        engine = thread_engine(model, settings, device)
        results["thread_sampled"] = run_engine(engine, levels, prompts, args.max_tokens, temperature=1.0)
        save()
    if "quiet" in phases:
        logger.info("Thread engine without the event-loop lag probe")
        engine = thread_engine(model, settings, device)
        results["thread_quiet"] = run_engine(engine, levels, prompts, args.max_tokens, probe=False)
        save()
    if "thread" in phases:
        logger.info("Thread engine (default), attention=%s", model.config._attn_implementation)
        engine = thread_engine(model, settings, device)
        results["thread"] = run_engine(engine, levels, prompts, args.max_tokens, check_sampling=True)
        results["sampling_check"] = results["thread"].pop()["sampling_check"]
        results["kv_budget_tokens"] = engine.config.kv_cache_tokens
        save()
    if "eager" in phases and model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")
        if "runner" in phases:
            logger.info("ModelRunner decode steps, attention=eager")
            results["runner_eager_attention"] = bench_runner(model, levels, prompts, args.runner_steps)
        if "profile" in phases and args.out:
            profile_tables(model, prompts[0], args.out.parent)
        logger.info("Thread engine, transformers' eager attention (GPTOSS_GQA_ATTENTION=false)")
        engine = thread_engine(model, settings, device)
        results["thread_eager_attention"] = run_engine(engine, levels, prompts, args.max_tokens)
        save()
    del model
    engine = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    # Same greedy tokens alone and batched? (Stream 0 has the same prompt in every run.)
    checks = {}
    for name in ("thread", "thread_sampled", "thread_eager_attention", "generate"):
        runs = results.get(name) or []
        if len(runs) > 1:
            alone = runs[0]["first_tokens"]
            checks[name] = {f"{r['streams']}": _agreement(alone, r["first_tokens"]) for r in runs[1:]}
    for label, other in (("gqa_vs_eager_1", "thread_eager_attention"), ("thread_vs_generate_1", "generate")):
        if results.get("thread") and results.get(other):
            checks[label] = _agreement(results[other][0]["first_tokens"], results["thread"][0]["first_tokens"])
    results["same_tokens_as_alone"] = checks
    save()

    print(f"\n{results['device']} · torch {results['torch']} · transformers {results['transformers']} · "
          f"{args.shape} random bf16 · prompt {args.prompt_len} · {args.max_tokens} tokens/stream")
    print(
        f"{'run':28} {'streams':>7} {'tok/s':>8} {'TTFT p50':>9} {'p95':>7} {'lat p50':>8} {'steps/s':>8} "
        f"{'lag p99 ms':>10}"
    )
    for name in ("generate", "thread", "thread_sampled", "thread_quiet", "thread_eager_attention"):
        for r in results.get(name) or []:
            print(f"{name:28} {r['streams']:>7} {r['tok_s']:>8} {r.get('ttft_p50', ''):>9} {r.get('ttft_p95', ''):>7} "
                  f"{r.get('lat_p50', ''):>8} {r.get('steps_per_s', ''):>8} {r.get('loop_lag_p99_ms', ''):>10}")
    print("tokens same as alone (prefix/total; sampled rows are seeded):", json.dumps(checks))
    print("sampling check:", json.dumps(results.get("sampling_check")))
    runner_rows = {name: results.get(name) for name in ("runner", "runner_eager_attention")}
    runner_rows.update({f"experts={k}": v for k, v in (results.get("experts_sweep") or {}).items()})
    for name, rows in runner_rows.items():
        if rows:
            print(f"{name}: " + ", ".join(f"{r['streams']} rows {r['step_ms']} ms" for r in rows))


if __name__ == "__main__":
    main()

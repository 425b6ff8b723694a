"""gpt-oss-20b on a CPU: the full-size model with MXFP4-resident experts and random weights.

No checkpoint is read. The model is gpt-oss-20b's architecture (gptoss/engine/sizing.py's
config: 24 layers, 32 experts top-4, hidden and intermediate 2880, vocabulary 201088) built as
the loader builds it, kernels/mxfp4.py's ``Mxfp4GptOssForCausalLM``, first on the meta device and
then given memory: the experts' blocks and scales are random bytes made directly in uint8 (no
bf16 expert set ever exists), every other weight random bf16. ``loader.prepare_model`` then
applies what a served checkpoint gets (the shared dequantisation scratch buffer, the experts
kernel, the attention and lm_head kernels). With random weights the speed is representative; the
text is not.

Through the engine's ``ModelRunner`` (the same prefill and decode calls the engine makes), for
each stream count: prefill of the streams' prompts (``--prompt-len`` random tokens each), then
greedy decode steps, all rows together, through the stock decode forward unless --lean-decode.
Reports tokens/s, ms per step, and the process's peak resident memory (RSS). First, and alone
with --dequant-only, it times one MoE layer's per-step dequantisation of 4 routed experts.

    python bench/cpu_20b.py                                       # needs ~17 GB of free RAM
    python bench/cpu_20b.py --streams 1,4 --decode-steps 8 --out cpu_20b.json
    python bench/cpu_20b.py --dequant-only                        # the dequantisation alone, seconds

Not a test: figures depend on the machine. Results go to stdout and, with --out, to a JSON file
rewritten after each stream count (so a run cut short still leaves what it measured).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.cpu_20b")

GIB = 1 << 30
# Scale bytes of the random experts: 2 ** (byte - 127) with bytes around 120 gives weights with a
# standard deviation near 0.02 (random FP4 codes have an RMS of ~2.9), like transformers' init.
SCALE_BYTES = (119, 122)
INIT_STD = 0.02


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process."""
    current = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """gpt-oss-20b with random MXFP4 experts and random bf16 elsewhere, prepared as the loader does."""
    import torch
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    from gptoss.engine.loader import prepare_model
    from gptoss.engine.sizing import gpt_oss_20b_config
    from gptoss.kernels.mxfp4 import Mxfp4GptOssForCausalLM, weight_bytes
    from gptoss.settings import get_settings

    settings = get_settings()
    config = gpt_oss_20b_config()
    skip = config.quantization_config["modules_to_not_convert"]
    del config.quantization_config  # as loader.load_mxfp4_resident does: the experts are ours
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Mxfp4GptOssForCausalLM._from_config(config, dtype=torch.bfloat16, modules_to_not_convert=skip)
    model.to_empty(device="cpu")  # uninitialised memory: every tensor is filled below
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype == torch.uint8 and name.endswith("_blocks"):
                p.random_(0, 256, generator=gen)  # two random FP4 codes a byte
            elif p.dtype == torch.uint8 and name.endswith("_scales"):
                p.random_(*SCALE_BYTES, generator=gen)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias") and "router" not in name:
                p.zero_()
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
        # The one buffer (rotary frequencies, not persistent) is computed, not loaded: rebuild it.
        model.model.rotary_emb = GptOssRotaryEmbedding(config=model.config)
    built = time.perf_counter() - t0
    sizes = weight_bytes(model)
    t0 = time.perf_counter()
    scratch = prepare_model(model, settings, "cpu")
    prepared = time.perf_counter() - t0
    info = {
        "weight_bytes": sizes,
        "scratch_bytes": scratch,
        "build_s": round(built, 1),
        "prepare_s": round(prepared, 1),
        "attention": model.config._attn_implementation,
        "experts": getattr(model.config, "_experts_implementation", None),
        "rss_after_build_gib": round(rss_bytes()[0] / GIB, 2),
    }
    logger.info(
        "Built gpt-oss-20b (random weights): %s, scratch %.2f GB, in %.0f s (+%.0f s prepare); attention=%s experts=%s",
        ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items()), scratch / 1e9, built, prepared,
        info["attention"], info["experts"],
    )
    return model, info


def time_dequantize(experts: int = 4, reps: int = 5, dequantize: Any = None, seed: int = 0) -> dict[str, Any]:
    """One MoE layer's per-step work before its kernel: ``experts`` full-size experts (gate_up and
    down, random codes, the scale bytes above) dequantised into their scratch slices. Median seconds
    of ``reps`` after one warm-up, ours (or ``dequantize``, same signature) and, for reference,
    transformers' ``convert_moe_packed_tensors`` (which allocates its result)."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from gptoss.engine.sizing import gpt_oss_20b_config
    from gptoss.kernels.mxfp4 import BLOCK, ExpertsScratch, dequantize_mxfp4

    dequantize = dequantize or dequantize_mxfp4
    config = gpt_oss_20b_config()
    h, i = config.hidden_size, config.intermediate_size
    gen = torch.Generator().manual_seed(seed)

    def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (experts, rows, cols // BLOCK, BLOCK // 2), generator=gen, dtype=torch.uint8)
        scales = torch.randint(*SCALE_BYTES, (experts, rows, cols // BLOCK), generator=gen, dtype=torch.uint8)
        return blocks, scales

    (gu_b, gu_s), (d_b, d_s) = packed(2 * i, h), packed(h, i)
    scratch = ExpertsScratch(experts, h, i, torch.bfloat16, "cpu")

    def ours() -> None:
        dequantize(gu_b, gu_s, out=scratch.gate_up)
        dequantize(d_b, d_s, out=scratch.down)

    def theirs() -> None:
        convert_moe_packed_tensors(gu_b, gu_s)
        convert_moe_packed_tensors(d_b, d_s)

    timings: dict[str, list[float]] = {"ours": [], "transformers": []}
    for _ in range(reps + 1):  # interleaved, so both see the same machine; the first round warms up
        for name, fn in (("ours", ours), ("transformers", theirs)):
            t = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t)
    return {
        "experts": experts,
        "blocks_mb": round((gu_b.nbytes + d_b.nbytes) / 1e6, 1),
        "bf16_mb": round(scratch.nbytes / 1e6, 1),
        **{f"{name}_s": round(statistics.median(ts[1:]), 4) for name, ts in timings.items()},
    }


def random_prompts(n: int, length: int, seed: int = 7) -> list[list[int]]:
    """Distinct random prompts of ordinary tokens, so each row routes its own experts."""
    rng = random.Random(seed)
    return [[rng.randrange(0, 199_998) for _ in range(length)] for _ in range(n)]


def run_streams(runner: Any, n: int, prompt_len: int, steps: int, deadline: float) -> dict[str, Any]:
    """Prefill n prompts together, then greedy decode steps for all n rows, as the engine steps them."""
    from gptoss.engine.runner import greedy_argmax

    runner.batch = None
    prompts = random_prompts(n, prompt_len)
    t0 = time.perf_counter()
    tokens = greedy_argmax(runner.prefill(prompts)).tolist()
    prefill = time.perf_counter() - t0
    logger.info("  %d stream(s): prefill of %d x %d tokens in %.1f s", n, n, prompt_len, prefill)
    times = []
    for i in range(steps + 1):  # the first step is a warm-up, not counted
        if i > 1 and time.perf_counter() > deadline:
            logger.info("  time budget reached after %d timed steps", len(times))
            break
        t = time.perf_counter()
        tokens = greedy_argmax(runner.decode(tokens)).tolist()
        if i:
            times.append(time.perf_counter() - t)
        logger.info("  %d stream(s): decode step %d in %.2f s", n, i, time.perf_counter() - t)
    step = statistics.median(times) if times else float("nan")
    return {
        "streams": n,
        "prompt_len": prompt_len,
        "prefill_s": round(prefill, 2),
        "prefill_tok_s": round(n * prompt_len / prefill, 1),
        "decode_steps": len(times),
        "decode_step_ms_median": round(1000 * step, 1),
        "decode_tok_s": round(n * len(times) / sum(times), 2) if times else None,
        "peak_rss_gib": round(rss_bytes()[1] / GIB, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,4", help="comma-separated stream counts, measured in this order")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--decode-steps", type=int, default=16, help="timed decode steps per stream count")
    ap.add_argument("--max-seconds", type=float, default=540.0,
                    help="stop decoding (keeping what was measured) once the run has taken this long")
    ap.add_argument("--lean-decode", action="store_true",
                    help="the engine's lean decode step (GPTOSS_LEAN_DECODE); its start-up agreement check runs "
                    "prefills and decode steps of its own, minutes here, and it saves Python overhead only")
    ap.add_argument("--dequant-only", action="store_true",
                    help="only time dequantising one layer's 4 routed experts (no model is built; ~1 GB of RAM)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file, rewritten after each stream count")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start = time.perf_counter()

    import torch

    from gptoss.engine.runner import ModelRunner

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))  # as the loader does on a CPU
    dequant = time_dequantize()
    logger.info("Dequantising 4 experts (gate_up and down): %s", dequant)
    if args.dequant_only:
        print(json.dumps(dequant, indent=2))
        return
    results: dict[str, Any] = {
        "model": "gpt-oss-20b config, random weights, MXFP4 experts",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    results["dequantize_4_experts"] = dequant
    model, results["build"] = build_model()
    t0 = time.perf_counter()
    runner = ModelRunner(model, lean_decode=args.lean_decode)  # with it, checks the lean step as the engine does
    results["build"]["runner_s"] = round(time.perf_counter() - t0, 1)
    results["build"]["lean_decode"] = runner.lean_decode
    results["runs"] = []
    for n in (int(x) for x in args.streams.split(",")):
        if time.perf_counter() - start > args.max_seconds:
            logger.info("time budget spent; %d stream(s) not measured", n)
            break
        results["runs"].append(run_streams(runner, n, args.prompt_len, args.decode_steps, start + args.max_seconds))
        logger.info("  %s", results["runs"][-1])
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    results["peak_rss_gib"] = round(rss_bytes()[1] / GIB, 2)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

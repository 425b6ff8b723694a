"""What gpt-oss-20b leaves for KV cache on a GPU of a given size, computed from its config alone.

The resident weights come from kernels/mxfp4.py's planner (the model built on the meta device,
as the loader builds it), plus the one bf16 scratch buffer that MXFP4 experts dequantise into.
The KV budget follows the engine's rule on a GPU (runner.default_kv_budget): a share of the
memory free after loading, at the bytes a token takes in every layer's cache.

    python -m gptoss.engine.sizing                 # the table, in markdown
    python -m gptoss.engine.sizing --readme README.md   # rewrite it between the README's markers
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# openai/gpt-oss-20b's config.json (transformers' GptOssConfig defaults are gpt-oss-120b's).
GPT_OSS_20B: dict[str, Any] = dict(
    num_hidden_layers=24,
    num_local_experts=32,
    num_experts_per_tok=4,
    hidden_size=2880,
    intermediate_size=2880,
    vocab_size=201088,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    sliding_window=128,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
)
GPU_GIB = (16, 24, 48, 80)  # the card's memory, in GiB
CUDA_OVERHEAD = 1 << 30  # assumed: the CUDA context and the allocator's own reserve
KV_FRACTION = 0.85  # runner.default_kv_budget's share of the free memory (a test keeps them equal)
KV_MIN_TOKENS = 8192  # ... and its floor
STREAM_TOKENS = 8192  # the "streams" column: sequences of this many tokens (prompt + output)
BEGIN, END = "<!-- sizing:begin (python -m gptoss.engine.sizing) -->", "<!-- sizing:end -->"
GIB = 1 << 30


def gpt_oss_20b_config() -> Any:
    from transformers import GptOssConfig

    from gptoss.engine.tiny_model import QUANTIZATION_CONFIG

    return GptOssConfig(**GPT_OSS_20B, quantization_config=dict(QUANTIZATION_CONFIG))


def kv_bytes_per_token(config: Any, element_size: int = 2) -> int:
    """What one token of KV cache takes in the engine's budget: K and V in every layer, full length."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * kv_heads * head_dim * element_size


def kv_budget(free: int, per_token: int) -> int:
    """The engine's KV-cache tokens for ``free`` bytes left after loading (default_kv_budget's rule)."""
    return max(KV_MIN_TOKENS, int(free * KV_FRACTION) // per_token)


@dataclass
class Resident:
    """Bytes a loaded model holds on the device: weights by format, and the MXFP4 scratch buffer."""

    weights: dict[str, int]
    scratch: int

    @property
    def total(self) -> int:
        return sum(self.weights.values()) + self.scratch


def resident_bytes(config: Any, *, mxfp4: bool = True) -> Resident:
    """What loading a checkpoint of ``config`` keeps resident (GPTOSS_DTYPE=auto when ``mxfp4``, else bfloat16)."""
    import torch

    from gptoss.kernels.mxfp4 import Mxfp4Experts, new_scratch, planned_weight_bytes

    weights = planned_weight_bytes(config, mxfp4=mxfp4)
    if not mxfp4:
        return Resident(weights, 0)
    with torch.device("meta"):  # one layer's experts: the shared scratch buffer is sized on it
        layer = Mxfp4Experts(config).to(torch.bfloat16)
    return Resident(weights, new_scratch(layer).nbytes)


def attention_scores_bytes(config: Any, step: int, context: int, element_size: int = 2) -> int:
    """One layer's attention scores for a prefill step of ``step`` tokens over ``context`` positions.

    The eager attention (kernels/attention.py) materialises them, every query head's, several
    times over (logits, masked, with the sinks, softmax).
    """
    return config.num_attention_heads * step * context * element_size


def prefill_step_tokens() -> int:
    """GPTOSS_MAX_BATCHED_TOKENS' default: the most prompt tokens one engine step prefills."""
    from gptoss.settings import Settings

    return int(Settings.model_fields["max_batched_tokens"].default)


@dataclass
class Row:
    gpu_gib: int
    resident: int
    free: int  # after the weights, the scratch buffer and CUDA_OVERHEAD
    kv_tokens: int  # 0 when the model does not fit
    label: str = ""

    @property
    def fits(self) -> bool:
        return self.free > 0

    @property
    def margin(self) -> int:
        """What the KV budget leaves of the free memory, for activations."""
        return self.free - int(self.free * KV_FRACTION)


def plan(gpu_gib: int, resident: Resident, per_token: int, label: str = "") -> Row:
    free = gpu_gib * GIB - resident.total - CUDA_OVERHEAD
    return Row(gpu_gib, resident.total, free, kv_budget(free, per_token) if free > 0 else 0, label)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def rows(config: Any | None = None) -> tuple[list[Row], Resident, Resident]:
    config = config or gpt_oss_20b_config()
    per_token = kv_bytes_per_token(config)
    mx, bf = resident_bytes(config), resident_bytes(config, mxfp4=False)
    out = [plan(g, mx, per_token) for g in GPU_GIB]
    out.append(plan(GPU_GIB[-1], bf, per_token, "bf16"))
    return out, mx, bf


def markdown(config: Any | None = None) -> str:
    """The README's GPU sizing table and its notes, for gpt-oss-20b (or ``config``)."""
    config = config or gpt_oss_20b_config()
    table, mx, _ = rows(config)
    context, step = int(config.max_position_embeddings), prefill_step_tokens()
    short_step = attention_scores_bytes(config, step, step)  # a fresh prompt's first step
    long_step = attention_scores_bytes(config, step, context)  # a step at the end of a full context
    lines = [
        f"| GPU (GiB) | resident (GiB) | left for KV (GiB) | KV tokens | {context:,}-token contexts "
        f"| {STREAM_TOKENS:,}-token streams |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        name = f"{r.gpu_gib}" + (f", {r.label}" if r.label else "")
        if not r.fits:
            lines.append(f"| {name} | {_gib(r.resident)} | does not fit | – | – | – |")
            continue
        tight = " \\*" if r.margin < short_step else ""
        lines.append(
            f"| {name} | {_gib(r.resident)} | {_gib(r.free)} | {r.kv_tokens:,}{tight} | "
            f"{r.kv_tokens // context} | {r.kv_tokens // STREAM_TOKENS} |"
        )
    lines += [
        "",
        f"Resident: MXFP4 experts {_gib(mx.weights.get('mxfp4', 0))} + bf16 rest "
        f"{_gib(mx.weights.get('bf16', 0))} + dequantisation scratch {_gib(mx.scratch)} GiB; `bf16`: "
        f"`GPTOSS_DTYPE=bfloat16`, no scratch. Left for KV: after {CUDA_OVERHEAD / GIB:.0f} GiB assumed for "
        f"CUDA. KV tokens: the engine's rule, {KV_FRACTION:.0%} of that at {kv_bytes_per_token(config) // 1024} "
        f"KiB a token. \\* The rest is under one {step:,}-token prefill step's attention scores "
        f"({_gib(short_step)} GiB; {_gib(long_step)} GiB at {context:,} positions): lower "
        "`GPTOSS_MAX_BATCHED_TOKENS` for long prompts. Computed, not measured.",
    ]
    return "\n".join(lines) + "\n"


def rewrite(readme: Path, table: str) -> bool:
    """Put ``table`` between the markers in ``readme``; True when the file changed."""
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table}{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def between_markers(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readme", type=Path, help="rewrite the table between this file's sizing markers")
    args = parser.parse_args()
    table = markdown()
    if args.readme:
        print(f"{args.readme}: {'updated' if rewrite(args.readme, table) else 'already current'}")
    else:
        print(table, end="")


if __name__ == "__main__":
    main()

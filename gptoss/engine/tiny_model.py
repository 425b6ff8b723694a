"""Build a tiny GPT-OSS-architecture checkpoint offline: random weights, the real tokenizer.

The real gpt-oss-20b cannot run on a small CPU box and hubs may be unreachable, so tests and the
demo use a checkpoint of the same architecture (``transformers.GptOssConfig``, head_dim 64,
mixture of experts, sliding + full attention, attention sinks) with random weights from a fixed
seed. It is written once to disk with ``save_pretrained`` and then loaded through exactly the
same ``from_pretrained`` path as the real model.

``mxfp4=True`` (the model name ``tiny-mxfp4``) writes the same weights with the MoE experts in
openai/gpt-oss-20b's own layout instead: MXFP4 ``*_blocks`` and ``*_scales`` (uint8) for each of
``model.layers.N.mlp.experts.{gate_up_proj,down_proj}``, next to the bf16 ``*_bias`` tensors,
and the same ``quantization_config`` in config.json.

    python tiny_model.py DIR [--shape test|bench] [--mxfp4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# Harmony's special tokens (o200k_harmony): ids 199998.. 201087; the others are reserved.
_NAMED_SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
}
VOCAB_SIZE = 201088  # gpt-oss-20b's config.json vocab_size: the o200k_harmony vocabulary (tests check it)
SEED = 1234
# Marks a finished build; bump when the recipe changes so old caches are rebuilt.
BUILD_MARKER = "tiny-gpt-oss.json"
BUILD_VERSION = 1
TINY_MXFP4 = "tiny-mxfp4"  # GPTOSS_MODEL for the tiny model with MXFP4 experts
# openai/gpt-oss-20b's config.json "quantization_config".
QUANTIZATION_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
    ],
}

SHAPES: dict[str, dict] = {
    # Small enough for fast tests on 2 CPU cores.
    "test": dict(
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    # The shape the peers' figures were measured on (../shared/peers/README.md).
    "bench": dict(
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
    ),
}


def special_tokens() -> dict[str, int]:
    """All o200k_harmony special tokens, name -> id."""
    out = {}
    for tid in range(199998, VOCAB_SIZE):
        out[_NAMED_SPECIALS.get(tid, f"<|reserved_{tid}|>")] = tid
    return out


def _write_tokenizer(out: Path, vocab_dir: Path) -> None:
    """Convert the o200k vocabulary + Harmony specials to a HF fast tokenizer (for peers/tools)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    pattern = "|".join(
        [
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
    )
    specials = special_tokens()
    converted = TikTokenConverter(
        vocab_file=str(vocab_dir / "o200k_base.tiktoken"), pattern=pattern, extra_special_tokens=specials
    ).converted()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=converted,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tok.save_pretrained(out)


def build_tiny_model(out: Path, shape: str = "test", vocab_dir: Path | None = None, *, mxfp4: bool = False) -> Path:
    """Write the tiny checkpoint to ``out`` unless a finished build of the same recipe is there."""
    out = Path(out)
    marker = out / BUILD_MARKER
    recipe = {"version": BUILD_VERSION, "shape": shape, "seed": SEED}
    if mxfp4:
        recipe["experts"] = "mxfp4"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return out

    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    if vocab_dir is None:
        from gptoss.harmony.vocab import ensure_vocab
        from gptoss.settings import get_settings

        vocab_dir = ensure_vocab(get_settings().cache_dir)

    experts = "MXFP4" if mxfp4 else "bf16"
    logger.info("Building tiny random-weight GPT-OSS model (%s shape, %s experts) in %s", shape, experts, out)
    out.mkdir(parents=True, exist_ok=True)
    config = GptOssConfig(
        vocab_size=VOCAB_SIZE,
        head_dim=64,
        max_position_embeddings=131072,
        sliding_window=128,
        pad_token_id=199999,
        eos_token_id=200002,
        bos_token_id=199998,
        tie_word_embeddings=False,
        dtype="bfloat16",
        **SHAPES[shape],
    )
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=199998, eos_token_id=[200002, 199999, 200012], pad_token_id=199999
    )
    if mxfp4:
        _save_mxfp4(model, out)
    else:
        model.save_pretrained(out, safe_serialization=True)
    _write_tokenizer(out, Path(vocab_dir))
    marker.write_text(json.dumps(recipe))
    return out


def _save_mxfp4(model, out: Path) -> None:
    """The model's weights with each experts tensor quantised to MXFP4 blocks and scales (one file)."""
    from safetensors.torch import save_file

    from gptoss.kernels.mxfp4 import PROJECTIONS, quantize_mxfp4

    state = dict(model.state_dict())
    for i in range(model.config.num_hidden_layers):
        for proj in PROJECTIONS:
            name = f"model.layers.{i}.mlp.experts.{proj}"
            state[f"{name}_blocks"], state[f"{name}_scales"] = quantize_mxfp4(state.pop(name))
    model.config.quantization_config = dict(QUANTIZATION_CONFIG)
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})


def tiny_model_dir(cache_dir: Path, shape: str = "test", *, mxfp4: bool = False) -> Path:
    return Path(cache_dir) / f"tiny-gpt-oss-{shape}{'-mxfp4' if mxfp4 else ''}-v{BUILD_VERSION}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="test")
    parser.add_argument("--mxfp4", action="store_true", help="experts in gpt-oss's MXFP4 layout")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    print(build_tiny_model(args.out, args.shape, mxfp4=args.mxfp4))  # the path, for scripts


if __name__ == "__main__":
    main()

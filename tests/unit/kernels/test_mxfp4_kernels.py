"""MXFP4 experts: the dequantiser is transformers' bit for bit, each experts kernel gives the bf16 layer's bits,
and the resident weight bytes of gpt-oss-20b, computed without its weights."""

from __future__ import annotations

import pytest
import torch
from transformers import GptOssConfig
from transformers.integrations.mxfp4 import convert_moe_packed_tensors
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

from gptoss.engine.sizing import GPT_OSS_20B  # openai/gpt-oss-20b's config.json
from gptoss.engine.tiny_model import QUANTIZATION_CONFIG
from gptoss.kernels.cpu import DENSE_EXPERTS, random_routing
from gptoss.kernels.gpu import STEP_SIZED_EXPERTS
from gptoss.kernels.mxfp4 import (
    FP4_VALUES,
    ExpertsScratch,
    Mxfp4Experts,
    Mxfp4GptOssForCausalLM,
    dequantize_mxfp4,
    planned_weight_bytes,
    quantize_mxfp4,
)
from tests.conftest import random_experts


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def test_dequantize_matches_transformers_for_every_byte_and_scale():
    """All 256 code pairs under each of the 255 finite E8M0 scales (255 is NaN in the format)."""
    blocks = torch.arange(256, dtype=torch.uint8).repeat(255, 1).view(1, 255, 16, 16)
    scales = torch.arange(255, dtype=torch.uint8).view(1, 255, 1).expand(1, 255, 16).contiguous()
    ours = dequantize_mxfp4(blocks, scales)
    assert ours.shape == (1, 16 * 32, 255)
    assert torch.equal(bits(ours), bits(convert_moe_packed_tensors(blocks, scales)))
    assert ours[0, 0:32:2, 127].tolist() == list(FP4_VALUES)  # bytes 0..15, low nibbles, scale 2**0


def test_dequantize_in_chunks_into_a_scratch_slice():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (5, 64, 3, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(110, 135, (5, 64, 3), generator=gen, dtype=torch.uint8)
    scratch = torch.full((8, 96, 64), float("nan"), dtype=torch.bfloat16)
    out = dequantize_mxfp4(blocks, scales, out=scratch[:5], chunk_bytes=64 * 3 * 16 * 2)  # 2 experts a chunk
    assert out.data_ptr() == scratch.data_ptr()
    assert torch.equal(bits(scratch[:5]), bits(convert_moe_packed_tensors(blocks, scales)))
    assert scratch[5:].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_to_wider_dtypes_matches_transformers(dtype):
    """float32 moves a byte's two values as one int64; float64 (no integer that wide) as a row of two."""
    blocks = torch.arange(256, dtype=torch.uint8).repeat(255, 1).view(1, 255, 16, 16)
    scales = torch.arange(255, dtype=torch.uint8).view(1, 255, 1).expand(1, 255, 16).contiguous()
    ours = dequantize_mxfp4(blocks, scales, dtype=dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, convert_moe_packed_tensors(blocks, scales, dtype=dtype))


@pytest.mark.parametrize("chunk_bytes", [1, 48 * 5, 64 * 48 - 1, 64 * 48 * 3])
def test_dequantize_chunked_by_rows_or_by_experts_gives_the_same_bits(chunk_bytes):
    """Chunks of a row, of a few rows (the last one short), of one expert, of several experts."""
    gen = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 256, (2, 2, 64, 3, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(0, 256, (2, 2, 64, 3), generator=gen, dtype=torch.uint8)
    ours = dequantize_mxfp4(blocks, scales, chunk_bytes=chunk_bytes)
    assert ours.shape == (2, 2, 96, 64)
    assert torch.equal(bits(ours), bits(dequantize_mxfp4(blocks, scales, chunk_bytes=1 << 30)))
    finite = scales.clamp(max=254)  # 255 is NaN in E8M0; transformers gives it no meaning
    assert torch.equal(bits(dequantize_mxfp4(blocks, finite, chunk_bytes=chunk_bytes)),
                       bits(convert_moe_packed_tensors(blocks.view(4, 64, 3, 16), finite.view(4, 64, 3)).view(2, 2, 96, 64)))


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 64])
def test_routed_experts_dequantise_from_their_own_blocks(monkeypatch, chunk_bytes):
    """Experts larger than a chunk are read where they lie, smaller ones gathered first: the same bits."""
    import gptoss.kernels.mxfp4 as mxfp4

    monkeypatch.setattr(mxfp4, "CHUNK_BYTES", chunk_bytes)
    mx, _ = mxfp4_copy(random_experts(8, 2, hidden=64))
    ids = torch.tensor([1, 4, 7])
    view = mx.dequantized(ids)
    for proj in ("gate_up_proj", "down_proj"):
        blocks, scales = getattr(mx, f"{proj}_blocks"), getattr(mx, f"{proj}_scales")
        expected = dequantize_mxfp4(blocks[ids], scales[ids])
        assert torch.equal(bits(getattr(view, proj)), bits(expected))
        assert torch.equal(getattr(view, f"{proj}_bias"), getattr(mx, f"{proj}_bias")[ids])
    assert view.gate_up_proj.data_ptr() == mx.scratch.gate_up.data_ptr()


def test_quantize_is_deterministic_and_within_half_a_step():
    w = (torch.randn(3, 128, 64, generator=torch.Generator().manual_seed(1)) * 0.05).to(torch.bfloat16)
    blocks, scales = quantize_mxfp4(w)
    assert blocks.shape == (3, 64, 4, 16) and scales.shape == (3, 64, 4)  # [E, out, in/32, 16]: gpt-oss's layout
    assert blocks.dtype == scales.dtype == torch.uint8
    again = quantize_mxfp4(w)
    assert torch.equal(blocks, again[0]) and torch.equal(scales, again[1])
    back = dequantize_mxfp4(blocks, scales)
    assert back.shape == w.shape
    # Each block's largest magnitude m is coded in [4, 8) * 2**e with e = floor(log2 m) - 2; the
    # FP4 grid is at most 2 * 2**e apart, so no value moves more than 2**e <= m / 4.
    step = w.float().transpose(1, 2).reshape(3, 64, 4, 32).abs().amax(-1) / 4
    err = (back.float() - w.float()).abs().transpose(1, 2).reshape(3, 64, 4, 32)
    assert (err <= step.unsqueeze(-1) + 1e-12).all()


def test_quantize_codes_exact_values_exactly():
    values = torch.tensor(FP4_VALUES[1:8] + FP4_VALUES[9:] + (0.0,) * 18, dtype=torch.float32) * 2.0**-3
    w = values.view(1, 32, 1).to(torch.bfloat16)  # one expert, one output, one block of 32 inputs
    blocks, scales = quantize_mxfp4(w)
    assert torch.equal(dequantize_mxfp4(blocks, scales), w)


def mxfp4_copy(bf16: GptOssExperts) -> tuple[Mxfp4Experts, GptOssExperts]:
    """The layer quantised to MXFP4, and the bf16 layer those MXFP4 weights dequantise to."""
    mx = Mxfp4Experts(bf16.config)
    for proj in ("gate_up_proj", "down_proj"):
        blocks, scales = quantize_mxfp4(getattr(bf16, proj).detach())
        getattr(mx, f"{proj}_blocks").data = blocks
        getattr(mx, f"{proj}_scales").data = scales
        getattr(mx, f"{proj}_bias").data = getattr(bf16, f"{proj}_bias").detach().clone()
        getattr(bf16, proj).data = dequantize_mxfp4(blocks, scales)
    return mx, bf16


KERNELS = ["grouped_mm", "batched_mm", "eager", DENSE_EXPERTS, STEP_SIZED_EXPERTS]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tokens", [1, 2, 7, 64])
def test_each_experts_kernel_gives_the_bf16_layers_bits(kernel, tokens):
    """Few routes: only the routed experts are dequantised (renumbered); many: all of them."""
    mx, bf16 = mxfp4_copy(random_experts(8, 2, hidden=64))
    for module in (mx, bf16):
        module.batched_max_tokens = 4
    mx.config._experts_implementation = kernel  # one config: both layers run the same kernel
    seen: list[int] = []
    dequantized = mx.dequantized
    mx.dequantized = lambda ids=None: seen.append(8 if ids is None else ids.numel()) or dequantized(ids)
    x, idx, w = random_routing(bf16, tokens, 2, torch.Generator().manual_seed(tokens))
    with torch.inference_mode():
        assert torch.equal(mx(x, idx, w), bf16(x, idx, w))
    routed = idx.unique().numel()
    assert seen == [8 if kernel == DENSE_EXPERTS or tokens * 2 >= 8 else routed]


def test_scratch_is_shared_and_sized_for_a_layer():
    mx, _ = mxfp4_copy(random_experts(8, 2, hidden=64))
    mx.config._experts_implementation = "grouped_mm"
    x, idx, w = random_routing(mx.to_bf16_experts(), 1, 2, torch.Generator().manual_seed(0))
    scratch = mx.scratch
    assert scratch is not None and scratch.gate_up.shape == (8, 64, 128) and scratch.down.shape == (8, 64, 64)
    with torch.inference_mode():
        mx(x, idx, w)
    assert mx.scratch is scratch  # reused, not reallocated


def test_modules_to_not_convert_keep_bf16_experts():
    config = GptOssConfig(**{**GPT_OSS_20B, "num_hidden_layers": 3})
    with torch.device("meta"):
        model = Mxfp4GptOssForCausalLM(config, QUANTIZATION_CONFIG["modules_to_not_convert"])
        assert all(isinstance(layer.mlp.experts, Mxfp4Experts) for layer in model.model.layers)
        assert not any(name.endswith(("gate_up_proj", "down_proj")) for name, _ in model.named_parameters())
        partial = Mxfp4GptOssForCausalLM(config, ["model.layers.1.mlp.experts"])
        kinds = [type(layer.mlp.experts) for layer in partial.model.layers]
        assert kinds == [Mxfp4Experts, GptOssExperts, Mxfp4Experts]
        with pytest.raises(ValueError, match="modules_to_not_convert"):
            Mxfp4GptOssForCausalLM(config, ["model.layers.*.mlp.experts"])


def test_gpt_oss_20b_resident_weights_without_weights():
    """gpt-oss-20b on the meta device: MXFP4 experts fit a 16 GB GPU's budget, bf16 experts do not."""
    config = GptOssConfig(**GPT_OSS_20B, quantization_config=dict(QUANTIZATION_CONFIG))
    mxfp4 = planned_weight_bytes(config)
    bf16 = planned_weight_bytes(config, mxfp4=False)
    layers, experts, h, i = 24, 32, 2880, 2880
    per_expert = 2 * i * (h // 32) * 17 + h * (i // 32) * 17  # 16 bytes of codes + 1 scale byte a block of 32
    assert mxfp4["mxfp4"] == layers * experts * per_expert
    assert set(mxfp4) == {"mxfp4", "bf16"} and set(bf16) == {"bf16"}
    assert sum(mxfp4.values()) <= 14e9
    assert bf16["bf16"] - mxfp4["bf16"] == layers * experts * 3 * h * i * 2  # the experts' bf16 weights
    assert 41e9 <= bf16["bf16"] <= 43e9
    scratch = ExpertsScratch(experts, h, i, torch.bfloat16, "meta")
    assert scratch.nbytes == experts * 3 * h * i * 2  # one layer's experts in bf16, shared by all layers

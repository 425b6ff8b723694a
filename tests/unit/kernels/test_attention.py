"""The copy-free gpt-oss attention: eager's results, and each row independent of its batch."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

from gptoss.kernels.attention import GQA_ATTENTION, gqa_attention_forward, use_gqa_attention
from tests.conftest import tiny_pair


class _Heads(torch.nn.Module):
    """The attributes eager attention reads from its module."""

    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.sinks = torch.nn.Parameter(torch.randn(heads).to(torch.bfloat16))
        self.eval()


def _inputs(batch, heads, kv_heads, length, positions, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, 64, generator=gen).to(torch.bfloat16)
    k = torch.randn(batch, kv_heads, positions, 64, generator=gen).to(torch.bfloat16)
    v = torch.randn(batch, kv_heads, positions, 64, generator=gen).to(torch.bfloat16)
    mask = torch.zeros(batch, 1, length, positions, dtype=torch.bfloat16)
    mask[0, :, :, : positions // 3] = torch.finfo(torch.bfloat16).min  # row 0 is left-padded
    return q, k, v, mask


@pytest.mark.parametrize(
    "batch,heads,kv_heads,length,positions",
    [(1, 4, 2, 1, 9), (16, 4, 2, 1, 150), (64, 64, 8, 1, 300), (3, 4, 2, 7, 7), (2, 8, 1, 5, 40)],
)
def test_matches_eager_attention(batch, heads, kv_heads, length, positions):
    torch.manual_seed(0)
    module = _Heads(heads, kv_heads)
    q, k, v, mask = _inputs(batch, heads, kv_heads, length, positions)
    with torch.inference_mode():
        out, probs = gqa_attention_forward(module, q, k, v, mask, scaling=0.125)
        ref_out, ref_probs = eager_attention_forward(module, q, k, v, mask, scaling=0.125)
    assert out.shape == ref_out.shape == (batch, length, heads, 64)
    assert torch.equal(probs, ref_probs)  # Q.K, mask, sinks, softmax: bit-identical
    torch.testing.assert_close(out, ref_out, rtol=1e-2, atol=1e-2)  # P.V: a matmul of another shape


@pytest.mark.parametrize("batch,positions", [(5, 40), (64, 300)])
def test_each_row_is_independent_of_its_batch(batch, positions):
    module = _Heads(4, 2)
    q, k, v, mask = _inputs(batch, 4, 2, 1, positions, seed=batch)
    with torch.inference_mode():
        together, _ = gqa_attention_forward(module, q, k, v, mask, scaling=0.125)
        for i in range(batch):
            alone, _ = gqa_attention_forward(
                module, q[i : i + 1], k[i : i + 1], v[i : i + 1], mask[i : i + 1], scaling=0.125
            )
            assert torch.equal(together[i : i + 1], alone), f"row {i}"


def test_tiny_model_switches_and_stays_close_to_eager():
    eager, fast = tiny_pair("gqa_attention")
    assert eager.config._attn_implementation == "eager"
    assert fast.config._attn_implementation == GQA_ATTENTION
    assert use_gqa_attention(fast) is False  # only replaces eager
    ids = torch.tensor([[200006, 1428, 200008, 13225, 11, 1495, 3, 4, 5]] * 2)
    with torch.inference_mode():
        a, b = eager(ids).logits, fast(ids).logits
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)

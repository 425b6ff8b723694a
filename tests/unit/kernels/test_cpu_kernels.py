"""CPU speed-ups are exact: same logits, same greedy tokens as the stock model."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.moe import grouped_mm_experts_forward

from gptoss.kernels.cpu import (
    DENSE_EXPERTS,
    PrepackedLinear,
    _dense_fits,
    dense_experts_forward,
    prepack_lm_head,
    random_routing,
    use_dense_experts,
)
from tests.conftest import random_experts, tiny_pair


def test_prepacked_linear_is_bit_identical():
    lin = torch.nn.Linear(64, 1000, bias=True).to(torch.bfloat16)
    packed = PrepackedLinear(lin)
    for shape in ((1, 64), (5, 64), (3, 1, 64), (2, 7, 64)):
        x = torch.randn(*shape).to(torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(packed(x), lin(x))


def test_model_with_prepacked_head_generates_the_same():
    stock, fast = tiny_pair("cpu_prepack", cpu_dense_experts=False)
    assert isinstance(fast.lm_head, PrepackedLinear)
    assert not isinstance(stock.lm_head, PrepackedLinear)
    assert prepack_lm_head(fast) is False  # already swapped: nothing to do
    ids = torch.tensor([[200006, 1428, 200008, 13225, 11, 1495]] * 3)
    with torch.inference_mode():
        a = stock.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
        b = fast.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
        assert torch.equal(stock(ids).logits, fast(ids).logits)
    assert torch.equal(a, b)


@pytest.mark.parametrize("tokens", [4, 16, 64])
def test_dense_experts_match_grouped_mm_bit_for_bit(tokens):
    experts, top_k = 8, 2
    module = random_experts(experts, top_k, hidden=256)
    assert _dense_fits(module, tokens, top_k)
    x, idx, w = random_routing(module, tokens, top_k, torch.Generator().manual_seed(tokens))
    with torch.inference_mode():
        dense = dense_experts_forward(module, x, idx, w)
        grouped = grouped_mm_experts_forward(module, x, idx, w)
    assert torch.equal(dense, grouped)


def test_dense_experts_only_when_cheap():
    small = random_experts(8, 2, hidden=256)
    assert not _dense_fits(small, 1, 2)  # one token hits 2 of 8 experts: grouped reads less
    assert _dense_fits(small, 64, 2)
    assert not _dense_fits(small, 512, 2)  # a long prefill: too many multiply-adds
    real = random_experts(32, 4, hidden=2880, device="meta")  # gpt-oss-20b's MoE shape, no memory
    assert not any(_dense_fits(real, t, 4) for t in (1, 8, 16, 64))


def test_tiny_model_uses_dense_experts_and_generates_the_same():
    stock, fast = tiny_pair("cpu_dense_experts")
    assert stock.config._experts_implementation == "grouped_mm"
    assert fast.config._experts_implementation == DENSE_EXPERTS
    assert use_dense_experts(fast) is False  # already on: nothing to do
    ids = torch.tensor([[200006, 1428, 200008, 13225, 11, 1495], [200006, 1428, 200008, 9906, 0, 17]] * 4)
    with torch.inference_mode():
        a = stock.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
        b = fast.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(a, b)


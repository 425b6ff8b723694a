"""The prepacked lm_head is exact: same logits, same greedy tokens as the stock model."""

from __future__ import annotations

import torch

from cpu_kernels import PrepackedLinear, prepack_lm_head
from loader import load_model, resolve_model_path
from settings import Settings


def test_prepacked_linear_is_bit_identical():
    lin = torch.nn.Linear(64, 1000, bias=True).to(torch.bfloat16)
    packed = PrepackedLinear(lin)
    for shape in ((1, 64), (5, 64), (3, 1, 64), (2, 7, 64)):
        x = torch.randn(*shape).to(torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(packed(x), lin(x))


def test_model_with_prepacked_head_generates_the_same():
    settings = Settings(model="tiny", cpu_prepack=False)
    path = resolve_model_path(settings)
    stock = load_model(settings, path)
    fast = load_model(Settings(model="tiny", cpu_prepack=True), path)
    assert isinstance(fast.lm_head, PrepackedLinear)
    assert not isinstance(stock.lm_head, PrepackedLinear)
    assert prepack_lm_head(fast) is False  # already swapped: nothing to do
    ids = torch.tensor([[200006, 1428, 200008, 13225, 11, 1495]] * 3)
    with torch.inference_mode():
        a = stock.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
        b = fast.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
        assert torch.equal(stock(ids).logits, fast(ids).logits)
    assert torch.equal(a, b)

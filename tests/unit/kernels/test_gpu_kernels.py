"""GPU step-sized experts: the right transformers kernel per step, switched on only off the CPU.

The kernels themselves are transformers'; what is ours is the choice, which runs anywhere, so
it is checked on CPU tensors (the H200 figures are in docs/performance.md).
"""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.moe import (
    batched_mm_experts_forward,
    grouped_mm_experts_forward,
)

import gptoss.kernels.gpu as gpu_kernels
from gptoss.kernels.cpu import random_routing
from gptoss.kernels.gpu import (
    STEP_SIZED_EXPERTS,
    step_sized_experts_forward,
    use_step_sized_experts,
)
from tests.conftest import random_experts


@pytest.mark.parametrize("tokens", [1, 3, 4, 5, 16])
def test_step_size_picks_the_kernel(tokens, monkeypatch):
    calls: list[str] = []
    for name, fn in (("batched_mm", batched_mm_experts_forward), ("grouped_mm", grouped_mm_experts_forward)):
        spy = lambda *a, _n=name, _f=fn: calls.append(_n) or _f(*a)  # noqa: E731
        monkeypatch.setattr(gpu_kernels, f"{name}_experts_forward", spy)
    module = random_experts(8, 2, hidden=64)
    module.batched_max_tokens = 4
    x, idx, w = random_routing(module, tokens, 2, torch.Generator().manual_seed(tokens))
    with torch.inference_mode():
        got = step_sized_experts_forward(module, x, idx, w)
        batched = batched_mm_experts_forward(module, x, idx, w)
        grouped = grouped_mm_experts_forward(module, x, idx, w)
    assert calls == ["batched_mm" if tokens <= 4 else "grouped_mm"]
    assert torch.equal(got, batched if tokens <= 4 else grouped)
    torch.testing.assert_close(batched, grouped, rtol=2e-2, atol=2e-2)  # both compute the same layer


def test_zero_means_always_grouped_mm():
    module = random_experts(8, 2, hidden=64)
    module.batched_max_tokens = 0
    x, idx, w = random_routing(module, 1, 2, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(step_sized_experts_forward(module, x, idx, w), grouped_mm_experts_forward(module, x, idx, w))


def _tiny_model(device: str):
    from transformers import AutoModelForCausalLM

    from gptoss.engine.loader import resolve_model_path
    from gptoss.settings import Settings

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(Settings(model="tiny")), dtype=torch.bfloat16)
    return model.to(device)


def test_switched_on_off_the_cpu_only():
    cpu = _tiny_model("cpu")
    assert use_step_sized_experts(cpu, 4) is False
    assert cpu.config._experts_implementation == "grouped_mm"

    gpu_like = _tiny_model("meta")  # any non-CPU device; no memory, no kernels run
    assert use_step_sized_experts(gpu_like, 0) is False
    assert use_step_sized_experts(gpu_like, 4) is True
    assert gpu_like.config._experts_implementation == STEP_SIZED_EXPERTS
    assert all(m.batched_max_tokens == 4 for m in gpu_like.modules() if hasattr(m, "gate_up_proj"))
    assert use_step_sized_experts(gpu_like, 4) is False  # already on: nothing to do

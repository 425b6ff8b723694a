"""GPU: gpt-oss's MoE layers pick their transformers experts kernel by the size of each step.

transformers offers two bf16 experts kernels. ``grouped_mm`` sorts the step's token-expert
pairs and runs one grouped matmul over each expert's own rows: the weights are read once, but
every layer launches ~15 routing ops. ``batched_mm`` gathers each pair's expert weights and runs
two ``bmm``: few launches, but it copies 4 experts' weights per token (~200 MB per token per layer
for gpt-oss-20b). On a GPU a decode step of a few rows is bound by how fast Python launches
kernels, so ``batched_mm`` is faster there, and transformers' own ``generate`` switches to it for
every decode step on GPU. From a few rows up the copies dominate, and ``grouped_mm`` wins
(docs/performance.md has the H200 figures).

The engine's steps range from one row to a full batch plus prompt chunks, so this kernel decides
per call: ``batched_mm`` up to ``GPTOSS_GPU_BATCHED_EXPERTS_TOKENS`` tokens, ``grouped_mm`` above.
It is registered through transformers' public experts interface; CPU models keep their own path
(kernels/cpu.py), and quantized (MXFP4) experts are not touched.
"""

from __future__ import annotations

import logging

import torch
from transformers.integrations.moe import (
    ExpertsInterface,
    batched_mm_experts_forward,
    grouped_mm_experts_forward,
)

from gptoss.kernels.cpu import moe_layers

logger = logging.getLogger(__name__)

STEP_SIZED_EXPERTS = "gptoss_step_sized"


def step_sized_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """``batched_mm`` for steps of at most ``self.batched_max_tokens`` tokens, else ``grouped_mm``."""
    if hidden_states.shape[0] <= getattr(self, "batched_max_tokens", 0):
        return batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)


ExpertsInterface.register(STEP_SIZED_EXPERTS, step_sized_experts_forward)


def use_step_sized_experts(model: torch.nn.Module, max_tokens: int) -> bool:
    """Switch a non-CPU model's grouped_mm experts to the step-sized choice; return whether it did."""
    layers = moe_layers(model)
    if max_tokens <= 0 or not layers or getattr(model.config, "_experts_implementation", None) != "grouped_mm":
        return False
    if layers[0].gate_up_proj.device.type == "cpu":
        return False
    for layer in layers:
        layer.batched_max_tokens = max_tokens
    model.set_experts_implementation(STEP_SIZED_EXPERTS)
    logger.info("MoE experts: batched_mm for steps of up to %d tokens, grouped_mm above", max_tokens)
    return True

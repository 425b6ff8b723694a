"""CPU speed-ups that keep the model's results bit-identical.

1. The output projection (lm_head) with oneDNN-prepacked weights.

gpt-oss's lm_head is a 201,088 x hidden matrix read in full for every decode step; on CPU it is
the largest single cost per token. ``F.linear`` re-lays the weight out for oneDNN on every call;
prepacking it once (what torch.compile's CPU backend does for linears) makes the projection
faster and gives bit-identical results. The prepacked op is a torch-internal one
(``torch.ops.mkldnn``), so it is used only after a self-check against ``F.linear`` and falls back
to the stock module if the op is missing or disagrees. ``GPTOSS_CPU_PREPACK=false`` turns it off.

2. Dense experts for small MoE layers. transformers' ``grouped_mm`` experts make two small
matmuls per expert hit plus ~40 routing ops per layer. When a step's tokens hit most experts
anyway and every expert on every token is cheap (small hidden size, few rows: a decode step of a
small model), it is faster to run all experts on all tokens with two batched matmuls and pick each
token's top-k rows. gpt-oss-20b never
takes this path (one token through all 32 experts is 0.8 G multiply-adds, over the limit). It is
registered through transformers' experts interface and used only after a self-check against
``grouped_mm``. ``GPTOSS_CPU_DENSE_EXPERTS=false`` turns it off.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers.integrations.moe import ExpertsInterface, grouped_mm_experts_forward

logger = logging.getLogger(__name__)


class PrepackedLinear(torch.nn.Module):
    """Drop-in for an inference-only ``nn.Linear`` whose weight is prepacked for oneDNN."""

    def __init__(self, linear: torch.nn.Linear, batch_hint: int = 16) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.reshape(*lead, self.out_features)


def _agrees(original: torch.nn.Linear, packed: PrepackedLinear) -> bool:
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 7, 16):
            x = torch.randn(rows, original.in_features, generator=gen).to(original.weight.dtype)
            if not torch.equal(packed(x), F.linear(x, original.weight, original.bias)):
                return False
    return True


def prepack_lm_head(model: torch.nn.Module) -> bool:
    """Swap ``model.lm_head`` for a prepacked copy when that is exact; return whether it did."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cpu":
        return False
    if head.weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        packed = PrepackedLinear(head)
        ok = _agrees(head, packed)
    except (RuntimeError, AttributeError) as exc:  # op missing in this torch build
        logger.info("oneDNN prepacking unavailable (%s); using the stock lm_head", exc)
        return False
    if not ok:
        logger.warning("Prepacked lm_head disagrees with F.linear on this machine; using the stock one")
        return False
    model.lm_head = packed
    logger.info("lm_head prepacked for oneDNN (CPU decode speed-up)")
    return True


# --- dense experts for small MoE layers ----------------------------------------------------------
DENSE_EXPERTS = "gptoss_cpu_dense"
# Above this many multiply-adds for all experts on all tokens, grouped_mm wins (where the two
# cross over for the bench model's MoE shape on a CPU; bench/benchmark.py measures it served).
DENSE_EXPERTS_MAX_MACS = 128 * 2**20


def _dense_fits(experts: torch.nn.Module, tokens: int, top_k: int) -> bool:
    if not (experts.is_transposed and experts.has_bias and experts.has_gate):
        return False
    if experts.has_post_expert_norm or experts._is_expert_parallel:
        return False
    n = experts.num_experts
    macs = n * tokens * 3 * experts.hidden_size * experts.intermediate_size  # gate_up is 2I wide, down I
    return tokens * top_k >= n and macs <= DENSE_EXPERTS_MAX_MACS


def dense_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """All experts on all tokens when that is cheap, else transformers' grouped_mm.

    Same arithmetic as grouped_mm per (token, expert) pair: a bf16 matmul, then the bias added,
    the gate, the down matmul and bias, the routing weight, and the fp32-accumulated sum over k.
    """
    tokens, hidden = hidden_states.shape
    if not _dense_fits(self, tokens, top_k_index.size(-1)):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    x = hidden_states.unsqueeze(0).expand(self.num_experts, tokens, hidden)
    gate_up = torch.bmm(x, self.gate_up_proj) + self.gate_up_proj_bias.unsqueeze(1)  # [E, T, 2I]
    out = torch.bmm(self._apply_gate(gate_up), self.down_proj) + self.down_proj_bias.unsqueeze(1)  # [E, T, H]
    rows = torch.arange(tokens, device=hidden_states.device).unsqueeze(1)
    picked = out[top_k_index, rows]  # [T, k, H]: each token's own experts
    return (picked * top_k_weights.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)


ExpertsInterface.register(DENSE_EXPERTS, dense_experts_forward)


def moe_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The experts modules that go through transformers' experts interface (it gives them ``_apply_gate``)."""
    return [m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "_apply_gate")]


def random_routing(
    experts: torch.nn.Module, tokens: int, top_k: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random hidden states, distinct top-k experts per token and softmaxed weights, in the layer's dtype."""
    dtype = experts.gate_up_proj.dtype
    x = torch.randn(tokens, experts.hidden_size, generator=gen).to(dtype)
    idx = torch.stack([torch.randperm(experts.num_experts, generator=gen)[:top_k] for _ in range(tokens)])
    w = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=-1).to(dtype)
    return x, idx, w


def _dense_agrees(experts: torch.nn.Module, top_k: int) -> bool:
    """Dense and grouped_mm give the same bits on random tokens and routings this layer accepts."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for tokens in (-(-experts.num_experts // top_k), 16, 64):
            if not _dense_fits(experts, tokens, top_k):
                continue
            x, idx, w = random_routing(experts, tokens, top_k, gen)
            dense = dense_experts_forward(experts, x, idx, w)
            if not torch.equal(dense, grouped_mm_experts_forward(experts, x, idx, w)):
                return False
    return True


def use_dense_experts(model: torch.nn.Module) -> bool:
    """Switch a CPU model's experts from grouped_mm to the dense-when-small path, if exact here."""
    config = model.config
    layers = moe_layers(model)
    if not layers or getattr(config, "_experts_implementation", None) != "grouped_mm":
        return False
    if layers[0].gate_up_proj.device.type != "cpu":
        return False
    top_k = getattr(config, "num_experts_per_tok", 0)
    if top_k < 1 or not _dense_fits(layers[0], -(-layers[0].num_experts // top_k), top_k):
        return False  # never cheap for this model (e.g. gpt-oss-20b): keep grouped_mm
    if not _dense_agrees(layers[0], top_k):
        logger.warning("Dense experts disagree with grouped_mm on this machine; keeping grouped_mm")
        return False
    model.set_experts_implementation(DENSE_EXPERTS)
    logger.info("Small MoE layers on CPU: dense experts for small batches (exact, faster)")
    return True


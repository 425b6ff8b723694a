"""gpt-oss attention without copying the KV cache on every step.

transformers' eager gpt-oss attention (the one it uses when no flash/flex kernel is installed)
first repeats each key/value head for its query heads (``repeat_kv``): on every step of every
layer it copies the whole KV cache ``num_attention_heads / num_key_value_heads`` times (2x for
the bench model, 8x for gpt-oss-20b). This version folds the query heads of one KV head into the
matmul's row axis instead, so keys and values are read in place. Everything else (scaling, mask,
sinks, the max-subtracted softmax in the activation dtype) is the same sequence of ops.

Results: the Q·K products are bit-identical to eager's; the P·V products run as
[G·L x T]·[T x D] matmuls instead of G separate [L x T]·[T x D] ones, which some BLAS kernels
accumulate in a different order (last-bit differences in some shapes, e.g. 64 rows x 300
positions on the development CPU). Each row's result never depends on the other rows in the
batch, which is what the engine's batching guarantee needs; tests check both.

Registered through transformers' public attention and mask interfaces, and selected only for
models that would run eager attention. ``GPTOSS_GQA_ATTENTION=false`` keeps eager.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

logger = logging.getLogger(__name__)

GQA_ATTENTION = "gptoss_gqa_eager"


def gqa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager gpt-oss attention (with sinks) over un-repeated K/V; returns ([B, L, H, D], probs)."""
    batch, heads, length, dim = query.shape
    kv_heads, positions = key.shape[1], key.shape[2]
    group = heads // kv_heads
    q = query.reshape(batch, kv_heads, group * length, dim)  # head h = kv_head * group + g
    logits = torch.matmul(q, key.transpose(2, 3)).view(batch, heads, length, positions) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask
    sinks = module.sinks.reshape(1, -1, 1, 1).expand(batch, -1, length, -1)
    combined = torch.cat([logits, sinks], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = F.softmax(combined, dim=-1, dtype=combined.dtype)
    scores = F.dropout(probs[..., :-1], p=dropout, training=module.training).to(value.dtype)
    out = torch.matmul(scores.reshape(batch, kv_heads, group * length, positions), value)
    out = out.view(batch, heads, length, dim).transpose(1, 2).contiguous()
    return out, scores


AttentionInterface.register(GQA_ATTENTION, gqa_attention_forward)
AttentionMaskInterface.register(GQA_ATTENTION, eager_mask)  # same additive mask as eager


def use_gqa_attention(model: torch.nn.Module) -> bool:
    """Switch a gpt-oss model from eager attention to the copy-free version; return whether it did."""
    config = model.config
    if getattr(config, "model_type", None) != "gpt_oss" or config._attn_implementation != "eager":
        return False
    if config.num_attention_heads % config.num_key_value_heads:
        return False
    model.set_attn_implementation(GQA_ATTENTION)
    logger.info("Attention: grouped-query matmuls over the KV cache in place (no repeat_kv copies)")
    return True

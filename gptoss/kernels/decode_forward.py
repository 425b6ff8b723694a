"""One gpt-oss decode step with the same tensor ops as transformers' forward, without its Python.

On a small model the decode step is bound by per-call overhead, not arithmetic. transformers'
``GptOssForCausalLM.forward`` rebuilds both attention masks through its general mask machinery
(mask functions, offsets, vmap-capable indexing) on every call, and wraps the model and every
layer in decorators that merge config defaults, record outputs and rename deprecated keyword
arguments. For one new token per row the masks are simply the padding mask in the additive form
(all timeline columns for full attention, the last columns the sliding cache keeps for sliding
attention), so they are built here once per step with two tensor ops. The layers then run the
modules' own norms, projections, rotary embedding, cache update, attention and MoE blocks in
transformers' order: the result is the same bits (a 16-row step of the bench model: 15.9 to 13.2
ms on the development CPU).

Used only for decode steps (one new token per row) of gpt-oss models that run this project's
grouped-query attention (attention.py) over a ``DynamicCache``, and only after
:func:`lean_decode_agrees` has found it bit-identical to the stock forward on this machine
(``model_runner.ModelRunner`` runs that check). ``GPTOSS_LEAN_DECODE=false`` keeps the stock
forward.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

from gptoss.kernels.attention import GQA_ATTENTION, gqa_attention_forward


def supports_lean_decode(model: torch.nn.Module) -> bool:
    """A gpt-oss causal LM whose attention is ours (the op sequence this module mirrors)."""
    config = model.config
    inner = getattr(model, "model", None)
    return (
        getattr(config, "model_type", None) == "gpt_oss"
        and config._attn_implementation == GQA_ATTENTION
        and inner is not None
        and hasattr(inner, "layers")
        and hasattr(model, "lm_head")
    )


def decode_masks(mask: torch.Tensor, cache: DynamicCache, dtype: torch.dtype) -> list[torch.Tensor]:
    """Each layer's additive [B, 1, 1, kv] mask for one new token per row, as transformers builds it.

    ``mask`` is the [B, T] padding mask over the timeline, the new token's column included.
    With a single query position the causal and sliding-window conditions keep every cached
    column, so only padding is masked; a sliding layer sees the columns its cache returns
    (``get_mask_sizes``, read before the layer's update as transformers does).
    """
    full = torch.where(mask.bool(), torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)
    full = full[:, None, None, :]
    out, sliding = [], None
    for layer in cache.layers:
        if isinstance(layer, DynamicSlidingWindowLayer):
            if sliding is None:
                kv_length, kv_offset = layer.get_mask_sizes(1)
                sliding = full[..., kv_offset : kv_offset + kv_length]
            out.append(sliding)
        elif type(layer) is DynamicLayer:
            out.append(full)
        else:
            raise TypeError(f"lean decode does not handle {type(layer).__name__} cache layers")
    return out


def _layer_step(
    layer: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, cos_sin: tuple, cache: DynamicCache
) -> torch.Tensor:
    """GptOssDecoderLayer.forward with GptOssAttention.forward inlined (same ops, same order)."""
    residual = hidden
    x = layer.input_layernorm(hidden)
    attn = layer.self_attn
    input_shape = x.shape[:-1]
    hidden_shape = (*input_shape, -1, attn.head_dim)
    q = attn.q_proj(x).view(hidden_shape).transpose(1, 2)
    k = attn.k_proj(x).view(hidden_shape).transpose(1, 2)
    v = attn.v_proj(x).view(hidden_shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    k, v = cache.update(k, v, attn.layer_idx)
    out, _ = gqa_attention_forward(attn, q, k, v, mask, scaling=attn.scaling)
    out = attn.o_proj(out.reshape(*input_shape, -1).contiguous())
    hidden = residual + out
    residual = hidden
    x, _ = layer.mlp(layer.post_attention_layernorm(hidden))
    return residual + x


def lean_decode(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache
) -> torch.Tensor:
    """Last-position logits [B, V] for ids [B, 1]; appends to ``cache`` like ``model(...)`` does."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    masks = decode_masks(mask, cache, hidden.dtype)
    cos_sin = inner.rotary_emb(hidden, position_ids)
    for layer, layer_mask in zip(inner.layers, masks):
        hidden = _layer_step(layer, hidden, layer_mask, cos_sin, cache)
    hidden = inner.norm(hidden)
    return model.lm_head(hidden[:, -1:, :])[:, -1]

"""The lean decode step (decode_forward.py) against transformers' own forward, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

import gptoss.kernels.decode_forward as decode_forward
from gptoss.engine.loader import engine_config, load_model, resolve_model_path
from gptoss.engine.runner import ModelRunner, greedy_argmax
from gptoss.settings import Settings
from tests.unit.engine.test_engine import PROMPTS


@pytest.fixture(scope="module")
def model():
    settings = Settings(model="tiny")
    return load_model(settings, resolve_model_path(settings))


def test_lean_decode_equals_stock_forward_through_joins_leaves_and_the_sliding_window(model):
    """Same logits every step: padded rows, a row joining mid-flight, rows leaving (the timeline
    is trimmed), and short prompts growing past the sliding window (128)."""
    lean, stock = ModelRunner(model), ModelRunner(model, lean_decode=False)
    assert lean.lean_decode and not stock.lean_decode
    assert model.config.sliding_window == 128
    first = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]  # 12, 3 and 150 tokens
    tokens = greedy_argmax(stock.prefill(first)).tolist()
    lean.prefill(first)
    for step in range(150):
        if step == 20:
            joined = stock.prefill([PROMPTS[1]])
            assert torch.equal(lean.prefill([PROMPTS[1]]), joined)
            tokens += greedy_argmax(joined).tolist()
        if step == 60:  # the longest row leaves, then the padding-only columns are trimmed
            for runner in (stock, lean):
                runner.keep_rows([0, 1, 3])
            tokens = [tokens[i] for i in (0, 1, 3)]
        expected = stock.decode(tokens)
        got = lean.decode(tokens)
        assert torch.equal(got, expected), f"step {step}"
        assert torch.equal(lean.batch.mask, stock.batch.mask)
        tokens = greedy_argmax(expected).tolist()
    assert lean.batch.length > model.config.sliding_window  # the sliding layers ran with a full window


def test_decode_masks_are_transformers_masks(model):
    """The two-op masks equal what transformers' mask builders give for the same cache state."""
    runner = ModelRunner(model, lean_decode=False)
    runner.prefill([PROMPTS[2], PROMPTS[3]])  # 3 and 150 tokens: padding and a full sliding window
    batch = runner.batch
    mask = F.pad(batch.mask, (0, 1), value=1)
    embeds = torch.zeros((batch.size, 1, model.config.hidden_size), dtype=torch.bfloat16)
    kwargs = dict(config=model.config, inputs_embeds=embeds, attention_mask=mask, cache=batch.cache)
    expected = {
        "full_attention": create_causal_mask(**kwargs),
        "sliding_attention": create_sliding_window_causal_mask(**kwargs),
    }
    got = decode_forward.decode_masks(mask, batch.cache, torch.bfloat16)
    assert len(got) == len(model.config.layer_types)
    for layer_type, layer_mask in zip(model.config.layer_types, got):
        assert layer_mask.dtype == expected[layer_type].dtype
        assert torch.equal(layer_mask, expected[layer_type]), layer_type
    assert got[model.config.layer_types.index("sliding_attention")].shape[-1] == model.config.sliding_window


def test_a_disagreeing_lean_step_is_not_used(model, monkeypatch):
    """The load-time check compares bits: one changed op and the runner keeps the stock forward."""
    real = decode_forward._layer_step

    def off_by_a_bit(layer, hidden, *args):
        return real(layer, hidden, *args) * 1.0078125  # one bf16 ulp at 1.0

    monkeypatch.setattr(decode_forward, "_layer_step", off_by_a_bit)
    assert not ModelRunner(model).lean_decode


def test_a_cache_layout_the_lean_step_does_not_handle_keeps_the_stock_forward(model, monkeypatch):
    def unsupported(*args):
        raise TypeError("lean decode does not handle QuantizedLayer cache layers")

    monkeypatch.setattr(decode_forward, "decode_masks", unsupported)
    assert not ModelRunner(model).lean_decode


def test_lean_decode_only_where_it_mirrors_the_forward():
    """Transformers' eager attention is not what decode_forward inlines; the setting turns it off."""
    settings = Settings(model="tiny", gqa_attention=False)
    eager = load_model(settings, resolve_model_path(settings))
    assert not decode_forward.supports_lean_decode(eager)
    assert not ModelRunner(eager).lean_decode
    assert engine_config(Settings(lean_decode=False), "cpu").lean_decode is False
    assert engine_config(Settings(), "cpu").lean_decode is True

"""The tiny model in gpt-oss's MXFP4 layout: what it writes, how it loads, and that serving it with the
experts kept in MXFP4 gives the bits of the model dequantised at load, through our engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from safetensors import safe_open
from transformers import AutoConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

from gptoss.engine.core import Engine, EngineConfig
from gptoss.engine.loader import load_model, loaded_weight_bytes, resolve_model_path
from gptoss.engine.runner import ModelRunner
from gptoss.engine.tiny_model import QUANTIZATION_CONFIG
from gptoss.engine.types import GenerationRequest, SamplingParams
from gptoss.kernels.cpu import DENSE_EXPERTS
from gptoss.kernels.mxfp4 import dequantize_mxfp4, mxfp4_layers, planned_weight_bytes
from gptoss.observability.metrics import EngineGauges, Metrics
from gptoss.settings import Settings

PROMPTS = [
    [200006, 1428, 200008, 13225, 11, 1495, 553, 481, 30, 200007, 200006, 173781],
    list(range(1000, 1040)),
    [3, 4, 5],
    list(range(5000, 5150)),  # longer than the sliding window (128)
]


@pytest.fixture(scope="module")
def path() -> str:
    return resolve_model_path(Settings(model="tiny-mxfp4"))


def load_pair(path: str, **settings):
    """(experts kept in MXFP4, experts dequantised to bf16 at load), with the same settings."""
    mx = load_model(Settings(model="tiny-mxfp4", **settings), path)
    ref = load_model(Settings(model="tiny-mxfp4", dtype="bfloat16", **settings), path)
    return mx, ref


def file_tensors(path: str) -> dict[str, torch.Tensor]:
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        names = f.keys()
        return {k: f.get_tensor(k) for k in names}


def test_checkpoint_has_gpt_oss_20b_layout(path):
    config = AutoConfig.from_pretrained(path)
    assert config.quantization_config == QUANTIZATION_CONFIG
    mx = file_tensors(path)
    bf16 = file_tensors(resolve_model_path(Settings(model="tiny")))
    e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}.mlp.experts."
        shapes = {
            "gate_up_proj_blocks": (e, 2 * i, h // 32, 16), "gate_up_proj_scales": (e, 2 * i, h // 32),
            "down_proj_blocks": (e, h, i // 32, 16), "down_proj_scales": (e, h, i // 32),
        }
        for name, shape in shapes.items():
            assert mx[p + name].dtype == torch.uint8 and tuple(mx[p + name].shape) == shape
        for proj in ("gate_up_proj", "down_proj"):
            assert p + proj not in mx
            assert torch.equal(mx[p + proj + "_bias"], bf16[p + proj + "_bias"])
    rest = {k for k in bf16 if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    assert rest == {k for k in mx if not k.endswith(("_blocks", "_scales"))}
    assert all(torch.equal(mx[k], bf16[k]) for k in rest)  # the same model, its experts quantised


def test_transformers_dequantises_our_file_as_we_do(path):
    mx, ref = load_pair(path)
    tensors = file_tensors(path)
    for n, (ours, theirs) in enumerate(zip(mxfp4_layers(mx), (layer.mlp.experts for layer in ref.model.layers))):
        assert isinstance(theirs, GptOssExperts)
        view = ours.dequantized()
        for proj in ("gate_up_proj", "down_proj"):
            p = f"model.layers.{n}.mlp.experts.{proj}"
            from_file = dequantize_mxfp4(tensors[p + "_blocks"], tensors[p + "_scales"])
            assert torch.equal(getattr(theirs, proj), from_file)
            assert torch.equal(getattr(view, proj), from_file)
            assert torch.equal(getattr(theirs, proj + "_bias"), getattr(ours, proj + "_bias"))


def test_auto_keeps_the_experts_in_mxfp4(path):
    model = load_model(Settings(model="tiny-mxfp4"), path)
    sizes = loaded_weight_bytes()
    layers = mxfp4_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert not any(isinstance(m, GptOssExperts) for m in model.modules())
    assert {p.dtype for n, p in model.named_parameters() if n.endswith(("_blocks", "_scales"))} == {torch.uint8}
    assert len({id(layer.scratch) for layer in layers}) == 1  # one scratch buffer for every layer
    assert sizes == planned_weight_bytes(AutoConfig.from_pretrained(path))  # the plan is what loading holds
    assert sizes["mxfp4"] > 0
    load_model(Settings(model="tiny-mxfp4", dtype="bfloat16"), path)
    assert "mxfp4" not in loaded_weight_bytes()


def greedy_steps(model, prompts, steps: int) -> list[torch.Tensor]:
    """Prefill logits, then each decode step's logits, feeding back the greedy tokens."""
    runner = ModelRunner(model)
    logits = [runner.prefill(prompts)]
    for _ in range(steps):
        logits.append(runner.decode(logits[-1].argmax(-1).tolist()))
    return logits


@pytest.mark.parametrize("kernel", [DENSE_EXPERTS, "grouped_mm", "batched_mm", "eager"])
def test_mxfp4_steps_give_the_dequantised_models_bits(path, kernel):
    """Batched and single-row steps (the single row routes to fewer experts than there are)."""
    mx, ref = load_pair(path, cpu_dense_experts=kernel == DENSE_EXPERTS)
    for model in (mx, ref):
        if model.config._experts_implementation != kernel:
            model.set_experts_implementation(kernel)
    for prompts in (PROMPTS, PROMPTS[:1]):
        got, expected = greedy_steps(mx, prompts, 6), greedy_steps(ref, prompts, 6)
        for step, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), f"{kernel}: logits differ at step {step} of {len(prompts)} prompt(s)"


async def generate(model, prompts, n: int) -> list[list[int]]:
    engine = Engine(lambda: model, EngineConfig(), max_context=4096)
    engine.start()
    engine.wait_ready(60)
    try:
        async def one(prompt):
            params = SamplingParams(max_tokens=n, temperature=0.0)
            return [ev.token_id async for ev in engine.submit(GenerationRequest(list(prompt), params))]

        return list(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await engine.shutdown(1)


async def test_engine_greedy_tokens_equal(path):
    mx, ref = load_pair(path)
    assert mx.config._experts_implementation == ref.config._experts_implementation == DENSE_EXPERTS
    got, expected = await generate(mx, PROMPTS, 16), await generate(ref, PROMPTS, 16)
    assert got == expected and all(len(t) == 16 for t in got)
    assert [await generate(mx, [p], 8) for p in PROMPTS[:2]] == [[t[:8]] for t in expected[:2]]


def test_weight_gauge_is_set_once_the_model_is_loaded():
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    loaded: dict[str, int] = {}
    stats = type("Stats", (), {"running": 0, "waiting": 0, "kv_tokens": 0})
    gauges = EngineGauges(lambda: stats, "m", metrics=metrics, weight_bytes=lambda: loaded)
    gauges.refresh()
    assert "gptoss_model_weight_bytes{" not in generate_latest(registry).decode()
    loaded.update(mxfp4=208896, bf16=51883808)
    gauges.refresh()
    text = generate_latest(registry).decode()
    assert 'gptoss_model_weight_bytes{format="mxfp4",model="m"} 208896.0' in text
    assert 'gptoss_model_weight_bytes{format="bf16",model="m"} 5.1883808e+07' in text

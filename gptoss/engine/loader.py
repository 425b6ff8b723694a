"""Resolve the configured model to a directory and load it once (transformers + accelerate).

``tiny`` (``tiny-mxfp4``) builds the offline random-weight test checkpoint (tiny_model.py) and
then takes the same ``from_pretrained`` path as the real model, so tests exercise the real
loading code.

gpt-oss checkpoints keep their MoE experts in MXFP4 (``quantization_config.quant_method``
``mxfp4``). With ``GPTOSS_DTYPE=auto`` they stay so on every device: the model is built with
kernels/mxfp4.py's experts, which ``from_pretrained`` fills with the checkpoint's blocks and
scales as they are, and each step dequantises only what it needs. Any other dtype dequantises
every expert at load (transformers' ``Mxfp4Config(dequantize=True)``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptoss.engine.core import EngineConfig
from gptoss.engine.types import DEFAULT_CPU_KV_TOKENS
from gptoss.settings import Settings

logger = logging.getLogger(__name__)

# The resident weight bytes, by format, of the model this process loaded last (one engine a worker).
_weight_bytes: dict[str, int] = {}


def resolve_model_path(settings: Settings) -> str:
    """A local directory for ``tiny`` / ``tiny-mxfp4`` or a directory path; otherwise the HF id as given."""
    if settings.is_tiny:
        from gptoss.engine.tiny_model import TINY_MXFP4, build_tiny_model, tiny_model_dir

        mxfp4 = settings.model == TINY_MXFP4
        return str(build_tiny_model(tiny_model_dir(settings.cache_dir, mxfp4=mxfp4), mxfp4=mxfp4))
    return settings.model


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device != "auto":
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def mxfp4_quantization(config: Any) -> dict[str, Any] | None:
    """The checkpoint's ``quantization_config`` when its experts are in MXFP4, else None."""
    quant = getattr(config, "quantization_config", None)
    if quant is not None and not isinstance(quant, dict):
        quant = quant.to_dict()
    return quant if quant and quant.get("quant_method") == "mxfp4" else None


def load_model(settings: Settings, path: str | None = None) -> Any:
    """Load the causal LM for inference on the configured device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gptoss.kernels.mxfp4 import weight_bytes

    path = path or resolve_model_path(settings)
    device = pick_device(settings)
    if device == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    offline = bool(os.environ.get("HF_HUB_OFFLINE")) or Path(path).is_dir()
    device_map = "auto" if device == "cuda" else device
    config = AutoConfig.from_pretrained(path, local_files_only=offline)
    quant = mxfp4_quantization(config)
    if quant is not None and settings.dtype == "auto":
        logger.info("Loading model %s on %s (MXFP4 experts, bf16 elsewhere)", path, device)
        model = load_mxfp4_resident(path, config, device_map, offline)
    else:
        kwargs: dict[str, Any] = {"device_map": device_map}
        if settings.dtype != "auto":
            kwargs["dtype"] = getattr(torch, settings.dtype)
        else:
            kwargs["dtype"] = torch.bfloat16 if device == "cpu" else "auto"
        if quant is not None:  # every expert dequantised to that dtype as it loads
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        logger.info("Loading model %s on %s (%s)", path, device, kwargs["dtype"])
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=offline, **kwargs)
    sizes = weight_bytes(model)  # as loaded: prepare_model may re-lay some out (lm_head on CPU)
    scratch = prepare_model(model, settings, device)
    report_weights(sizes, scratch)
    if settings.is_tiny:
        logger.warning(
            "Serving the TINY RANDOM-WEIGHT test model: its output is noise. Set GPTOSS_MODEL to "
            "openai/gpt-oss-20b (or a local checkpoint directory) for the real model."
        )
    return model


def load_mxfp4_resident(path: str, config: Any, device_map: str, offline: bool) -> Any:
    """The checkpoint with its MXFP4 experts loaded as they are (uint8 blocks and scales), bf16 elsewhere.

    ``config`` (the checkpoint's) loses its ``quantization_config``: the experts are ours to
    handle, and transformers' own MXFP4 path (Hub kernels, or dequantising everything) stays out.
    """
    import torch

    from gptoss.kernels.mxfp4 import Mxfp4GptOssForCausalLM

    if getattr(config, "model_type", None) != "gpt_oss":
        raise ValueError(f"MXFP4-resident experts are for gpt-oss checkpoints, not {config.model_type!r}")
    quant = mxfp4_quantization(config) or {}
    del config.quantization_config
    return Mxfp4GptOssForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=torch.bfloat16,
        device_map=device_map,
        local_files_only=offline,
        modules_to_not_convert=quant.get("modules_to_not_convert"),
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def report_weights(sizes: dict[str, int], scratch: int = 0) -> None:
    """Log the resident weight bytes by format and keep them for :func:`loaded_weight_bytes`."""
    global _weight_bytes
    parts = ", ".join(f"{fmt} {_size(n)}" for fmt, n in sorted(sizes.items(), key=lambda kv: -kv[1]))
    extra = f"; MXFP4 experts scratch {_size(scratch)}" if scratch else ""
    logger.info("Model weights resident: %s (%s)%s", _size(sum(sizes.values())), parts, extra)
    _weight_bytes = dict(sizes)


def loaded_weight_bytes() -> dict[str, int]:
    """Resident weight bytes by format ('mxfp4', 'bf16', ...) of the model loaded here; empty before."""
    return dict(_weight_bytes)


def prepare_model(model: Any, settings: Settings, device: str) -> int:
    """The kernels the settings ask for, applied to a loaded model; returns the MXFP4 scratch bytes.

    Separate from :func:`load_model` so that a model built in memory (bench/gpu_engine.py's
    full-size random-weight model) is served exactly as a loaded checkpoint would be.

    MXFP4 experts get their scratch buffer here, and run the experts kernel a bf16 model would:
    kernels/cpu.py and kernels/gpu.py choose it on their first layer dequantised (ExpertsProbe).
    """
    from gptoss.kernels.mxfp4 import ExpertsProbe, mxfp4_layers, use_scratch

    model.eval()
    if settings.gqa_attention:
        from gptoss.kernels.attention import use_gqa_attention

        use_gqa_attention(model)
    if device == "cpu" and settings.cpu_prepack:
        from gptoss.kernels.cpu import prepack_lm_head

        prepack_lm_head(model)
    scratch = use_scratch(model) if mxfp4_layers(model) else 0
    experts = ExpertsProbe(model) if scratch else model
    if device == "cpu" and settings.cpu_dense_experts:
        from gptoss.kernels.cpu import use_dense_experts

        use_dense_experts(experts)
    if device == "cuda":
        from gptoss.kernels.gpu import use_step_sized_experts

        use_step_sized_experts(experts, settings.gpu_batched_experts_tokens)
    if isinstance(experts, ExpertsProbe):
        experts.finish(model)
    return scratch


def engine_config(settings: Settings, device: str) -> EngineConfig:
    """Backpressure defaults per device; explicit settings win."""
    max_running = settings.max_running or (128 if device == "cuda" else 64)
    # On GPU, 0 lets the engine size it from the memory free after loading (default_kv_budget).
    kv = settings.kv_cache_tokens or (0 if device == "cuda" else DEFAULT_CPU_KV_TOKENS)
    return EngineConfig(
        max_running=max_running,
        max_queued=settings.max_queued,
        max_batched_tokens=settings.max_batched_tokens,
        kv_cache_tokens=kv,
        request_timeout=settings.request_timeout,
        lean_decode=settings.lean_decode,
    )


def pick_engine(settings: Settings) -> str:
    """'transformers' or 'vllm': GPTOSS_ENGINE, where 'auto' is vLLM when installed and a CUDA GPU is present."""
    if settings.engine != "auto":
        return settings.engine
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"


def build_engine(settings: Settings, checkpoint: Callable[[], str | None], *, grammar_tokenizer: Any = None) -> Any:
    """The engine front end the settings ask for; neither loads anything before ``start()``.

    ``grammar_tokenizer`` (llguidance's view of the vocabulary) lets our engine serve requests
    with a grammar; vLLM builds its own from the model's tokenizer.

    ``checkpoint()`` (which may download) runs on the engine's background thread, so /health
    answers 503 instead of hanging while the model arrives.
    """
    device = pick_device(settings)
    config = engine_config(settings, device)
    config.grammar_tokenizer = grammar_tokenizer
    if pick_engine(settings) == "vllm":
        from gptoss.engine.vllm_engine import VLLMEngine

        config.kv_cache_tokens = 0  # vLLM sizes its cache from its memory settings; known once started
        logger.info("Engine: vLLM on %s", device)
        return VLLMEngine(settings, lambda: checkpoint() or resolve_model_path(settings), config, device=device)
    from gptoss.engine.core import Engine

    logger.info("Engine: transformers on %s", device)
    return Engine(lambda: load_model(settings, checkpoint()), config)

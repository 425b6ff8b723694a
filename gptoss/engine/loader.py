"""Resolve the configured model to a directory and load it once (transformers + accelerate).

``tiny`` builds the offline random-weight test checkpoint (tiny_model.py) and then takes the
same ``from_pretrained`` path as the real model, so tests exercise the real loading code.
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


def resolve_model_path(settings: Settings) -> str:
    """A local directory for ``tiny`` or a directory path; otherwise the HF id as given."""
    if settings.is_tiny:
        from gptoss.engine.tiny_model import build_tiny_model, tiny_model_dir

        return str(build_tiny_model(tiny_model_dir(settings.cache_dir)))
    return settings.model


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device != "auto":
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(settings: Settings, path: str | None = None) -> Any:
    """Load the causal LM for inference on the configured device."""
    import torch
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(settings)
    device = pick_device(settings)
    kwargs: dict[str, Any] = {}
    if settings.dtype != "auto":
        kwargs["dtype"] = getattr(torch, settings.dtype)
    elif device == "cpu":
        kwargs["dtype"] = torch.bfloat16  # MXFP4 kernels need a GPU; transformers dequantizes to bf16
    else:
        kwargs["dtype"] = "auto"  # keeps the checkpoint's MXFP4 experts where the GPU supports them
    kwargs["device_map"] = "auto" if device == "cuda" else device
    if device == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    offline = bool(os.environ.get("HF_HUB_OFFLINE")) or Path(path).is_dir()
    logger.info("Loading model %s on %s (%s)", path, device, kwargs.get("dtype"))
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=offline, **kwargs)
    prepare_model(model, settings, device)
    if settings.is_tiny:
        logger.warning(
            "Serving the TINY RANDOM-WEIGHT test model: its output is noise. Set GPTOSS_MODEL to "
            "openai/gpt-oss-20b (or a local checkpoint directory) for the real model."
        )
    return model


def prepare_model(model: Any, settings: Settings, device: str) -> None:
    """The kernels the settings ask for, applied to a loaded model.

    Separate from :func:`load_model` so that a model built in memory (bench/gpu_engine.py's
    full-size random-weight model) is served exactly as a loaded checkpoint would be.
    """
    model.eval()
    if settings.gqa_attention:
        from gptoss.kernels.attention import use_gqa_attention

        use_gqa_attention(model)
    if device == "cpu" and settings.cpu_prepack:
        from gptoss.kernels.cpu import prepack_lm_head

        prepack_lm_head(model)
    if device == "cpu" and settings.cpu_dense_experts:
        from gptoss.kernels.cpu import use_dense_experts

        use_dense_experts(model)
    if device == "cuda":
        from gptoss.kernels.gpu import use_step_sized_experts

        use_step_sized_experts(model, settings.gpu_batched_experts_tokens)


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


def build_engine(settings: Settings, checkpoint: Callable[[], str | None]) -> Any:
    """The engine front end the settings ask for; neither loads anything before ``start()``.

    ``checkpoint()`` (which may download) runs on the engine's background thread, so /health
    answers 503 instead of hanging while the model arrives.
    """
    device = pick_device(settings)
    config = engine_config(settings, device)
    if pick_engine(settings) == "vllm":
        from gptoss.engine.vllm_engine import VLLMEngine

        config.kv_cache_tokens = 0  # vLLM sizes its cache from its memory settings; known once started
        logger.info("Engine: vLLM on %s", device)
        return VLLMEngine(settings, lambda: checkpoint() or resolve_model_path(settings), config, device=device)
    from gptoss.engine.core import Engine

    logger.info("Engine: transformers on %s", device)
    return Engine(lambda: load_model(settings, checkpoint()), config)

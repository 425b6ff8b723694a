"""The vLLM engine's pure parts: vLLM outputs as our token events, settings as vLLM's arguments.

vLLM itself is not installed in the default venv; the end-to-end API suite runs against it
(``make test-vllm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gptoss.engine.core import NO_TOKEN, EngineConfig
from gptoss.engine.loader import pick_engine
from gptoss.engine.types import TokenEvent
from gptoss.engine.vllm_engine import engine_args, token_events
from gptoss.settings import Settings


@dataclass
class Logprob:  # the shape of vllm.logprobs.Logprob
    logprob: float
    rank: int | None


@dataclass
class Output:  # the shape of vllm.outputs.CompletionOutput (delta mode)
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)


def test_tokens_without_logprobs():
    assert token_events(Output([5, 6]), None, finished=False) == [TokenEvent(5), TokenEvent(6)]


def test_the_last_event_carries_the_finish():
    events = token_events(Output([5, 7], finish_reason="length"), None, finished=True)
    assert events == [TokenEvent(5), TokenEvent(7, finish_reason="length")]


@pytest.mark.parametrize("reason", ["abort", "stop"])
def test_a_finish_without_tokens_is_an_event_of_its_own(reason):
    assert token_events(Output([], finish_reason=reason), None, finished=True) == [
        TokenEvent(NO_TOKEN, finish_reason=reason)
    ]


def test_logprobs_keep_the_chosen_token_and_the_top_k_in_rank_order():
    # The chosen token (9) is not among the top 2: vLLM sends it with its own rank.
    entries = {9: Logprob(-3.0, 7), 4: Logprob(-0.5, 1), 2: Logprob(-1.0, 2)}
    (ev,) = token_events(Output([9], [entries]), 2, finished=False)
    assert ev.token_id == 9 and ev.logprob == -3.0
    assert ev.top_logprobs == ((4, -0.5), (2, -1.0))


def test_logprobs_zero_alternatives():
    (ev,) = token_events(Output([4], [{4: Logprob(-0.5, 1)}]), 0, finished=False)
    assert ev.logprob == -0.5 and ev.top_logprobs == ()


def test_engine_args_follow_the_settings():
    settings = Settings(
        model="tiny",
        vllm_tensor_parallel_size=2,
        vllm_gpu_memory_utilization=0.8,
        vllm_max_model_len=8192,
        vllm_prefix_caching=False,
        vllm_kv_cache_dtype="fp8",
        shutdown_grace=12.5,
    )
    config = EngineConfig(max_running=96, max_batched_tokens=4096)
    args = engine_args(settings, "/models/x", "cuda", config)
    assert args["model"] == "/models/x" and args["skip_tokenizer_init"] is False
    assert args["tensor_parallel_size"] == 2 and args["gpu_memory_utilization"] == 0.8
    assert args["max_model_len"] == 8192 and args["enable_prefix_caching"] is False
    assert args["kv_cache_dtype"] == "fp8" and args["dtype"] == "auto"
    assert args["max_num_seqs"] == 96 and args["max_num_batched_tokens"] == 4096
    assert args["shutdown_timeout"] == 13  # in-flight requests get the whole grace period


def test_engine_args_defaults_on_cpu():
    args = engine_args(Settings(model="tiny"), "/m", "cpu", EngineConfig())
    assert args["dtype"] == "bfloat16" and "max_model_len" not in args  # the model's own window
    assert args["enable_prefix_caching"] is True


def test_explicit_engine_choice_wins():
    assert pick_engine(Settings(engine="vllm")) == "vllm"
    assert pick_engine(Settings(engine="transformers")) == "transformers"


@pytest.mark.parametrize(
    ("installed", "cuda", "want"),
    [(True, True, "vllm"), (True, False, "transformers"), (False, True, "transformers"), (False, False, "transformers")],
)
def test_auto_picks_vllm_only_where_it_is_installed_and_a_gpu_is_there(monkeypatch, installed, cuda, want):
    import importlib.util

    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: (object() if installed else None) if name == "vllm" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_engine(Settings(engine="auto")) == want

"""gpt-oss on vLLM (``GPTOSS_ENGINE=vllm``): vLLM's ``AsyncLLM`` behind the engine interface of core.py.

vLLM gets token ids and sends token ids back and detokenises nothing; it loads the tokenizer only
because its structured-output backend reads the vocabulary from it. Harmony rendering and parsing,
stop strings, logprob shaping, keys, limits, metrics and the access log stay above the engine and
are the same for both engines. vLLM brings what our engine does not have on a GPU: CUDA graphs,
MXFP4 kernels, paged KV memory, prefix caching and tensor parallelism.

Only imported when this engine is chosen: vllm is not in the default dependency set
(requirements-vllm.txt is its own).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from gptoss.engine.core import NO_TOKEN, EngineConfig, EngineStats, FrontEnd, TokenStream
from gptoss.engine.types import (
    EngineFault,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    SequenceFailed,
    TokenEvent,
)
from gptoss.settings import Settings

logger = logging.getLogger(__name__)

_FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


def vllm_sampling_params(params: SamplingParams) -> Any:
    """Our per-sequence settings as vLLM's: every field we accept has its vLLM counterpart.

    ``ignore_eos`` keeps the stop tokens exactly ours (Harmony's, per request), instead of
    adding the checkpoint's generation-config EOS list; ``detokenize=False``: text is ours.
    """
    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    return VSamplingParams(
        n=1,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logit_bias=dict(params.logit_bias) if params.logit_bias else None,
        logprobs=params.logprobs,
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=True,
        detokenize=False,
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
        # The same grammar our engine applies (llguidance, vLLM's "guidance" backend), from the first token.
        structured_outputs=StructuredOutputsParams(grammar=params.grammar) if params.grammar else None,
    )


def token_events(output: Any, want: int | None, finished: bool) -> list[TokenEvent]:
    """One vLLM delta (a ``CompletionOutput``) as our token events; the last carries the finish."""
    ids = list(output.token_ids)
    logprobs = output.logprobs if want is not None else None
    events = []
    for i, tok in enumerate(ids):
        lp = top = None
        if logprobs is not None and i < len(logprobs):
            entries = logprobs[i]
            chosen = entries.get(tok)
            lp = None if chosen is None else float(chosen.logprob)
            # vLLM returns the chosen token plus the top k; rank 1..k are the alternatives.
            ranked = sorted((e.rank, t, float(e.logprob)) for t, e in entries.items() if 0 < (e.rank or 0) <= want)
            top = tuple((t, v) for _, t, v in ranked)
        events.append(TokenEvent(tok, logprob=lp, top_logprobs=top))
    if finished:
        reason = _FINISH.get(output.finish_reason, "stop")
        if events:
            last = events[-1]
            events[-1] = TokenEvent(last.token_id, last.logprob, last.top_logprobs, finish_reason=reason)
        else:
            events.append(TokenEvent(NO_TOKEN, finish_reason=reason))
    return events


class VLLMEngine(FrontEnd):
    """vLLM's async engine with our front end: readiness, 429 on a full queue, drain, stats.

    ``start()`` builds the engine on a thread (vLLM loads the model in its own process, which
    takes a while); until then ``/health`` answers 503 and requests get ``EngineNotReady``.
    Requests beyond ``max_running`` wait in vLLM's scheduler; we count them against
    ``max_queued`` so that a full queue answers 429 as with our engine.
    """

    def __init__(self, settings: Settings, model_path: Callable[[], str], config: EngineConfig, *, device: str) -> None:
        super().__init__(config)
        self._settings = settings
        self._model_path = model_path  # may download: called on the loading thread
        self._device = device
        self._llm: Any = None
        self._thread: threading.Thread | None = None
        self._max_context = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}  # request id -> its tokens so far (prompt + generated)
        self._received = self._finished = self._prompt_tokens = self._generated_tokens = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="gptoss-vllm-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            args = engine_args(self._settings, self._model_path(), self._device, self.config)
            if self._device == "cpu":  # read by vLLM's CPU build, in its engine process too
                os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._settings.vllm_cpu_kv_cache_gib))
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            logger.info("Starting vLLM: %s", args)
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
            vconfig = self._llm.vllm_config
            self._max_context = int(vconfig.model_config.max_model_len)
            blocks = vconfig.cache_config.num_gpu_blocks or 0
            self.config.kv_cache_tokens = int(blocks * vconfig.cache_config.block_size)
            logger.info(
                "vLLM is ready: context %d tokens, KV cache %d tokens", self._max_context, self.config.kv_cache_tokens
            )
        except BaseException as exc:  # reported through /health and every request
            logger.exception("vLLM failed to start")
            self.load_error = exc
        self._ready.set()

    @property
    def serving(self) -> bool:
        """Ready for new requests: started, not draining, and vLLM's engine process alive."""
        return self.ready and not self.draining and self._llm is not None and not self._llm.errored

    @property
    def max_context(self) -> int:
        return self._max_context

    async def shutdown(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish within ``grace`` seconds, then stop vLLM."""
        self._draining = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._inflight:
            await asyncio.sleep(0.05)
        self._stopped = True
        if self._llm is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._llm.shutdown)

    def stats(self) -> EngineStats:
        """Counts from this front end: vLLM runs up to ``max_running`` of the requests in flight."""
        with self._lock:
            inflight = len(self._inflight)
            running = min(inflight, self.config.max_running)
            return EngineStats(
                running=running,
                waiting=inflight - running,
                kv_tokens=sum(self._inflight.values()),
                steps=0,
                prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated_tokens,
                finished=self._finished,
                kv_capacity=self.config.kv_cache_tokens,
                received=self._received,
            )

    # --- submission (event loop side) --------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> TokenStream:
        with self._lock:
            self._admit(max(0, len(self._inflight) - self.config.max_running))  # raises: 429, 503
            self._inflight[request.request_id] = len(request.prompt_ids)
            self._received += 1
            self._prompt_tokens += len(request.prompt_ids)
        task: asyncio.Task[None] | None = None
        stream = TokenStream(request, asyncio.get_running_loop(), lambda: task is not None and task.cancel())
        task = asyncio.get_running_loop().create_task(self._run(request, stream))
        return stream

    async def _run(self, request: GenerationRequest, stream: TokenStream) -> None:
        """Feed one request's vLLM outputs into its stream; whatever happens, the stream ends."""
        from vllm.inputs import TokensPrompt

        want = request.params.logprobs
        try:
            params = vllm_sampling_params(request.params)
            prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
            async with asyncio.timeout(self.config.request_timeout):
                async for out in self._llm.generate(prompt, params, request.request_id):
                    events = token_events(out.outputs[0], want, out.finished)
                    self._count(request.request_id, sum(ev.token_id >= 0 for ev in events))
                    for ev in events:
                        stream._put(ev)
        except (asyncio.CancelledError, TimeoutError):
            # The consumer went away (cancel), or the request ran past its time: vLLM has aborted
            # it (its generate() does on cancellation); a consumer still reading sees "abort".
            stream._put(TokenEvent(NO_TOKEN, finish_reason="abort"))
        except Exception as exc:
            stream._put(_engine_error(exc))
        finally:
            with self._lock:
                self._inflight.pop(request.request_id, None)
                self._finished += 1

    def _count(self, request_id: str, new_tokens: int) -> None:
        with self._lock:
            if request_id in self._inflight:
                self._inflight[request_id] += new_tokens
            self._generated_tokens += new_tokens


def _engine_error(exc: Exception) -> Exception:
    """A vLLM failure as ours: a request vLLM refused fails alone; a dead engine fails them all."""
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        logger.error("vLLM's engine died: %s", exc)
        return EngineFault(f"the vLLM engine stopped ({type(exc).__name__})")
    if isinstance(exc, ValueError):  # vLLM's validation errors (VLLMValidationError is one)
        return SequenceFailed(str(exc))
    logger.error("vLLM request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return EngineFault(f"{type(exc).__name__} in vLLM")


def engine_args(settings: Settings, model_path: str, device: str, config: EngineConfig) -> dict[str, Any]:
    """``AsyncEngineArgs`` for the settings: one place maps GPTOSS_* to vLLM's knobs.

    vLLM sizes its KV cache from its memory settings (``GPTOSS_VLLM_GPU_MEMORY_UTILIZATION``, on
    CPU ``GPTOSS_VLLM_CPU_KV_CACHE_GIB``); ``GPTOSS_KV_CACHE_TOKENS`` is our engine's.
    """
    dtype = {"auto": "auto" if device == "cuda" else "bfloat16"}.get(settings.dtype, settings.dtype)
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": settings.served_model_name,
        # Token ids in, token ids out; the tokenizer is loaded only for the grammars of
        # structured output (llguidance reads the vocabulary from it).
        "skip_tokenizer_init": False,
        "structured_outputs_config": {"backend": "guidance"},
        "dtype": dtype,
        "tensor_parallel_size": settings.vllm_tensor_parallel_size,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "enable_prefix_caching": settings.vllm_prefix_caching,
        "kv_cache_dtype": settings.vllm_kv_cache_dtype,
        "max_num_seqs": config.max_running,
        "max_num_batched_tokens": max(config.max_batched_tokens, 16),
        # BentoML's arbiter sends SIGTERM to the worker's children too, vLLM's engine process
        # among them: it then finishes the requests in flight within our grace period instead
        # of aborting them.
        "shutdown_timeout": math.ceil(settings.shutdown_grace),
        "disable_log_stats": True,  # our /metrics and access log cover it
        "enable_log_requests": False,
    }
    if settings.vllm_max_model_len:
        args["max_model_len"] = settings.vllm_max_model_len
    return args

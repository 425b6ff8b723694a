"""The inference engine: continuous batching on the thread that owns the model.

:class:`EngineCore` is the scheduler. It runs on one thread (the only one that touches torch)
and hands every step's token events to a *sink*. :class:`Engine` runs the core on a thread of
the server process and gives the event loop an async interface (submit a request, iterate its
:class:`TokenStream`, cancel); its sink hands events to the event loop with one
``call_soon_threadsafe`` per step.

Scheduling: every step (1) drops cancelled / timed-out sequences, (2) admits waiting requests
while the running set, the KV budget and the per-step prefill budget allow, prefilling them
together and merging them into the batch, (3) decodes one token for every running sequence in a
single batched forward, (4) retires finished sequences at once. No request waits for another
to finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gptoss.engine.stream import Deliveries, TokenStream, deliver, post_to_loops
from gptoss.engine.types import (
    DEFAULT_CPU_KV_TOKENS,
    EngineFault,
    EngineNotReady,
    EngineOverloaded,
    EngineShuttingDown,
    FinishReason,
    GenerationRequest,
    SequenceFailed,
    TokenEvent,
)

__all__ = ["Deliveries", "Engine", "EngineConfig", "EngineCore", "EngineStats", "FrontEnd", "NO_TOKEN", "TokenStream",
           "deliver", "post_to_loops"]

logger = logging.getLogger(__name__)

# Marks an event that carries no token (a sequence aborted before producing one).
NO_TOKEN = -1


@dataclass
class EngineConfig:
    max_running: int = 32
    max_queued: int = 256
    max_batched_tokens: int = 2048
    kv_cache_tokens: int = DEFAULT_CPU_KV_TOKENS  # 0: size it after loading the model
    request_timeout: float = 600.0
    lean_decode: bool = True  # decode steps through decode_forward where that is exact (model_runner)
    # llguidance tokenizer of the model's vocabulary: needed to serve requests with a grammar.
    grammar_tokenizer: Any = None


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_tokens: int
    steps: int
    prompt_tokens: int
    generated_tokens: int
    finished: int
    kv_capacity: int = 0
    received: int = 0  # requests the core has been handed, ever


class Handle(Protocol):
    """What the core needs of a request's consumer: whether it gave up."""

    cancelled: bool


@dataclass
class _Seq:
    request: GenerationRequest
    handle: Handle
    deadline: float
    sampler: Any = None  # model_runner.SamplerState, created on the engine thread
    matcher: Any = None  # llguidance matcher of a request with a grammar (engine/grammar.py)
    generated: int = 0
    last_token: int = NO_TOKEN
    context_len: int = 0
    finish: FinishReason | None = None
    error: BaseException | None = None  # what ended it instead of a finish reason
    events: list[TokenEvent] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.finish is not None or self.error is not None


class EngineCore:
    """The continuous-batching scheduler (see module docstring); runs on the model's thread.

    ``loader()`` builds the model on that thread. ``sink(deliveries)`` is called once per step
    (and when requests end early) from that thread, with what each request produced.
    """

    def __init__(
        self,
        loader: Callable[[], Any],
        config: EngineConfig,
        sink: Callable[[Deliveries], None],
        *,
        max_context: int | None = None,
    ) -> None:
        self._loader = loader
        self.config = config
        self._sink = sink
        self.max_context = max_context or 0
        self._runner: Any = None
        self._grammars: Any = None
        self._vocab = 0
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._inbox: collections.deque[_Seq] = collections.deque()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._admitting: list[_Seq] = []  # taken from the queue for this step's prefill
        self._chunked: tuple[_Seq, Any] | None = None  # a long prompt being prefilled
        self._stopping = False
        self._received = self._steps = self._prompt_tokens = self._generated_tokens = self._finished = 0

    # --- any thread ----------------------------------------------------------------------------------
    def add(self, request: GenerationRequest, handle: Handle) -> None:
        seq = _Seq(request, handle, deadline=time.monotonic() + self.config.request_timeout)
        with self._lock:
            self._inbox.append(seq)
            self._received += 1
            self._wakeup.notify()

    def wake(self) -> None:
        """Have the loop look at cancellations now, even if it is idle."""
        with self._lock:
            self._wakeup.notify()

    def stop(self) -> None:
        """End the loop after the current step; whatever is left is aborted."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()

    def queued(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._inbox)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._waiting or self._running or self._chunked)

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=len(self._running) + (self._chunked is not None),
                waiting=len(self._waiting) + len(self._inbox),
                kv_tokens=self._runner.kv_tokens() if self._runner is not None else 0,
                steps=self._steps,
                prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated_tokens,
                finished=self._finished,
                kv_capacity=self.config.kv_cache_tokens,
                received=self._received,
            )

    # --- the model's thread ----------------------------------------------------------------------
    def load(self) -> None:
        """Build the model and size what depends on it. Raises what the loader raises."""
        model = self._loader()
        from gptoss.engine.runner import ModelRunner, default_kv_budget

        self._runner = ModelRunner(model, lean_decode=self.config.lean_decode)
        if self.config.kv_cache_tokens <= 0:  # size it from what the loaded model left free
            self.config.kv_cache_tokens = default_kv_budget(model)
        self._vocab = int(model.config.vocab_size)
        if self.config.grammar_tokenizer is not None:
            from gptoss.engine.grammar import Grammars

            self._grammars = Grammars(self.config.grammar_tokenizer)
        if not self.max_context:
            self.max_context = int(getattr(model.config, "max_position_embeddings", 4096))
        logger.info(
            "Engine ready (max_running=%d, kv budget=%d tokens, lean decode %s)",
            self.config.max_running, self.config.kv_cache_tokens, "on" if self._runner.lean_decode else "off",
        )

    def loop(self) -> None:
        """Step while there is work, sleep while there is none, until :meth:`stop`."""
        while True:
            with self._lock:
                while not (self._inbox or self._waiting or self._running or self._chunked or self._stopping):
                    self._wakeup.wait()
                if self._stopping:
                    break
                self._waiting.extend(self._inbox)
                self._inbox.clear()
            try:
                self._step()
            except Exception as exc:  # a failed model step must not kill the engine: fail its requests
                self._fail_batch(exc)
        self._abort_all()

    def _fail_batch(self, exc: Exception) -> None:
        """A fault of the batch itself: every sequence in it (and any joining it) gets an error.

        Waiting requests and a long prompt being prefilled in its own cache are not part of it.
        """
        victims = self._running + self._admitting
        logger.error("Engine step failed (%s: %s); failing %d requests", type(exc).__name__, exc, len(victims),
                     exc_info=exc)
        error = EngineFault(f"the model step failed ({type(exc).__name__})")
        deliveries: Deliveries = []
        for seq in victims:
            if seq.events:  # tokens of this step that were not handed over yet
                deliveries.append((seq.handle, seq.events))
            deliveries.append((seq.handle, error))
        self._sink(deliveries)
        with self._lock:
            self._running = []
            self._admitting = []
        self._runner.batch = None

    def _fail_one(self, seq: _Seq, exc: BaseException, what: str) -> None:
        """End one sequence that is not in the running batch with an error; nobody else is touched."""
        logger.warning("Request %s failed in %s: %s: %s", seq.request.request_id, what, type(exc).__name__, exc)
        seq.error = SequenceFailed(f"{what} failed ({type(exc).__name__}: {exc})")
        self._sink([(seq.handle, seq.error)])

    def _prepare(self, seq: _Seq) -> bool:
        """Build the sequence's own sampler state and check its prompt before it touches the batch.

        Anything here that raises belongs to this request alone (its bias, seed, prompt), so
        it fails that request only.
        """
        from gptoss.engine.runner import SamplerState

        try:
            ids = seq.request.prompt_ids
            if not ids or min(ids) < 0 or max(ids) >= self._vocab:
                raise ValueError(f"prompt token ids must be in [0, {self._vocab})")
            seq.sampler = SamplerState.create(seq.request.params, ids, self._vocab, self._runner.device)
            grammar = seq.request.params.grammar
            if grammar is not None:
                if self._grammars is None:
                    raise ValueError("this engine was started without a grammar tokenizer")
                seq.matcher = self._grammars.matcher(grammar)
        except Exception as exc:
            self._fail_one(seq, exc, "preparing the request")
            return False
        return True

    def _abort_all(self) -> None:
        with self._lock:
            pending = list(self._inbox) + list(self._waiting) + self._running
            if self._chunked is not None:
                pending.append(self._chunked[0])
                self._chunked = None
            self._inbox.clear()
            self._waiting.clear()
            self._running = []
        self._sink([(seq.handle, [TokenEvent(NO_TOKEN, finish_reason="abort")]) for seq in pending])

    def _abort(self, seq: _Seq) -> None:
        """End a sequence that is not in the running batch (waiting, or being prefilled)."""
        seq.finish = "abort"
        self._sink([(seq.handle, [TokenEvent(NO_TOKEN, finish_reason="abort")])])

    def _step(self) -> None:
        now = time.monotonic()
        # 1. Drop cancelled or expired requests, waiting or running.
        for seq in list(self._waiting):
            if seq.handle.cancelled or now > seq.deadline:
                with self._lock:
                    self._waiting.remove(seq)
                self._abort(seq)
        for seq in self._running:
            if seq.handle.cancelled or now > seq.deadline:
                seq.finish = "abort"
                seq.events.append(TokenEvent(NO_TOKEN, finish_reason="abort"))
        self._retire()

        # 2. Admit and prefill. Prompts longer than the per-step budget are prefilled in chunks,
        #    one chunk per step, so running streams are not stalled behind them.
        budget = self.config.max_batched_tokens
        if self._chunked is not None:
            seq, job = self._chunked
            if seq.handle.cancelled or now > seq.deadline:
                self._chunked = None
                self._abort(seq)
            else:
                budget = 0
                try:
                    part = self._runner.prefill_chunk(job, self.config.max_batched_tokens)
                except Exception as exc:  # its own cache: the running batch is untouched
                    self._chunked = None
                    self._fail_one(seq, exc, "prefilling the prompt")
                    part = None
                if part is not None:
                    self._chunked = None
                    self._admitting = [seq]
                    self._join([seq], *part)
        admitted = self._admitting
        timeline = self._runner.batch.length if self._runner.batch is not None else 0
        # A long prompt being prefilled joins the batch soon: it counts as a row of its length.
        chunk_rows = 0
        if self._chunked is not None:
            chunk_rows = 1
            timeline = max(timeline, len(self._chunked[0].request.prompt_ids))
        while self._waiting and len(self._running) + len(admitted) + chunk_rows < self.config.max_running:
            seq = self._waiting[0]
            n = len(seq.request.prompt_ids)
            rows = len(self._running) + len(admitted) + chunk_rows + 1
            fits_kv = rows * max(timeline, n) <= self.config.kv_cache_tokens
            if not fits_kv and (admitted or self._running or chunk_rows):
                break
            if n > self.config.max_batched_tokens:
                if self._chunked is not None or len(self._running) + len(admitted) + 1 >= self.config.max_running:
                    break
                with self._lock:
                    self._waiting.popleft()
                if self._prepare(seq):
                    try:
                        self._chunked = (seq, self._runner.start_chunked(seq.request.prompt_ids))
                        chunk_rows, timeline = 1, max(timeline, n)
                    except Exception as exc:
                        self._fail_one(seq, exc, "prefilling the prompt")
                continue
            if n > budget:
                break
            with self._lock:
                self._waiting.popleft()
            if not self._prepare(seq):
                continue
            admitted.append(seq)
            budget -= n
            timeline = max(timeline, n)
        if admitted:
            try:  # in a cache of their own: a failure here leaves the running batch as it was
                part = self._runner.prefill_apart([s.request.prompt_ids for s in admitted])
            except Exception as exc:
                for seq in admitted:
                    self._fail_one(seq, exc, "prefilling the prompt")
                part = None
            if part is not None:
                self._join(admitted, *part)
            self._admitting = []

        # 3. One batched decode step for everyone still running.
        if self._running:
            logits = self._runner.decode([s.last_token for s in self._running])
            self._emit(self._running, self._sample(self._running, logits))
            self._retire()
        self._steps += 1
        self._flush()

    def _join(self, seqs: list[_Seq], logits: Any, batch: Any) -> None:
        """Prefilled sequences: merge their cache into the batch, sample their first token, run them."""
        self._runner.join(batch)  # a failure from here on is the batch's (loop() fails all of it)
        for seq in seqs:
            seq.context_len = len(seq.request.prompt_ids)
            self._prompt_tokens += seq.context_len
        with self._lock:
            self._running.extend(seqs)
        self._admitting = []
        self._emit(seqs, self._sample(seqs, logits))
        self._retire()

    def _sample(self, seqs: list[_Seq], logits: Any) -> list[Any]:
        """One token per row; a row whose sampling raises gets the exception, the others their token.

        The batch is sampled in one call; only when that raises is each row sampled alone, to
        find the row at fault.
        """
        from gptoss.engine.runner import sample

        failed = self._mask(seqs, logits)
        if failed is not None:
            return failed
        # Each row draws its random number first: keep the generators' states so that the rows
        # sampled again alone draw what they would have drawn (a seed reproduces, fault or not).
        saved = [(s.sampler.generator, s.sampler.generator.get_state()) for s in seqs if s.sampler.generator]
        try:
            return list(sample(logits, [s.sampler for s in seqs]))
        except Exception:
            for generator, state in saved:
                generator.set_state(state)
            out: list[Any] = []
            for i, seq in enumerate(seqs):
                try:
                    out.extend(sample(logits[i : i + 1], [seq.sampler]))
                except Exception as exc:
                    out.append(exc)
            return out

    def _mask(self, seqs: list[_Seq], logits: Any) -> list[Any] | None:
        """Apply the grammar masks of constrained rows; if that fails, their error (others sample on)."""
        rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return None
        from gptoss.engine.grammar import apply_grammar_masks

        try:
            apply_grammar_masks(self._grammars, logits, rows, [seqs[i].matcher for i in rows])
        except Exception as exc:  # the masks' fault: fail the constrained rows, sample the rest
            logger.warning("Computing grammar masks failed: %s: %s", type(exc).__name__, exc)
            keep = [i for i in range(len(seqs)) if i not in set(rows)]
            out: list[Any] = [exc] * len(seqs)
            if keep:
                for i, s in zip(keep, self._sample([seqs[i] for i in keep], logits[keep])):
                    out[i] = s
            return out
        return None

    def _emit(self, seqs: list[_Seq], sampled: list[Any]) -> None:
        from gptoss.engine.grammar import advance

        for seq, s in zip(seqs, sampled):
            if not isinstance(s, BaseException) and seq.matcher is not None:
                try:
                    advance(seq.matcher, s.token)
                except Exception as exc:
                    s = exc
            if isinstance(s, BaseException):
                logger.warning("Request %s failed in sampling: %s: %s", seq.request.request_id, type(s).__name__, s)
                seq.error = SequenceFailed(f"sampling failed ({type(s).__name__}: {s})")
                continue
            seq.generated += 1
            seq.context_len += 1
            seq.last_token = s.token
            self._generated_tokens += 1
            finish: FinishReason | None = None
            if s.token in seq.request.params.stop_token_ids:
                finish = "stop"
            elif seq.generated >= seq.request.params.max_tokens or seq.context_len >= self.max_context:
                finish = "length"
            seq.finish = finish
            seq.events.append(TokenEvent(s.token, s.logprob, s.top, finish))

    def _retire(self) -> None:
        """Deliver pending events and drop finished rows from the batch at once."""
        if not any(s.done for s in self._running):
            return
        self._flush()
        keep = [i for i, s in enumerate(self._running) if not s.done]
        self._finished += len(self._running) - len(keep)
        self._runner.keep_rows(keep)
        with self._lock:
            self._running = [self._running[i] for i in keep]

    def _flush(self) -> None:
        """Hand this step's events to the sink, in one call."""
        out: Deliveries = []
        for seq in self._running:
            if seq.events:
                out.append((seq.handle, seq.events))
                seq.events = []
            if seq.error is not None:
                out.append((seq.handle, seq.error))
        self._sink(out)


class FrontEnd:
    """What both front ends share: readiness, the load error, and which requests they refuse."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self.load_error: BaseException | None = None
        self._draining = self._stopped = False

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        if self.load_error is not None:
            raise RuntimeError(f"model failed to load: {self.load_error}") from self.load_error
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.load_error is None and not self._stopped

    @property
    def draining(self) -> bool:
        """Shutting down: in-flight requests finish, new ones are refused."""
        return self._draining

    def _admit(self, queued: int) -> None:
        """Raise what a new request gets instead of a stream, given how many already wait."""
        if self.load_error is not None or not self._ready.is_set():
            loading = self.load_error is None
            raise EngineNotReady("the model is still loading" if loading else "the model failed to load")
        if self._draining:
            raise EngineShuttingDown("the server is shutting down")
        if queued >= self.config.max_queued:
            raise EngineOverloaded(f"{self.config.max_queued} requests are already queued")


class Engine(FrontEnd):
    """The core on a thread of this process, bridged to asyncio (see module docstring)."""

    def __init__(self, loader: Callable[[], Any], config: EngineConfig, *, max_context: int | None = None) -> None:
        super().__init__(config)
        self._core = EngineCore(loader, config, post_to_loops, max_context=max_context)
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model and start stepping, both on the engine thread (returns at once)."""
        self._thread = threading.Thread(target=self._thread_main, name="gptoss-engine", daemon=True)
        self._thread.start()

    def _thread_main(self) -> None:
        try:
            self._core.load()
        except BaseException as exc:  # reported through /health and every request
            logger.exception("Model failed to load")
            self.load_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._core.loop()

    @property
    def serving(self) -> bool:
        """Ready for new requests: loaded, not draining, and its thread still stepping."""
        alive = self._thread is not None and self._thread.is_alive()
        return self.ready and not self.draining and alive

    @property
    def max_context(self) -> int:
        return self._core.max_context

    async def shutdown(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish within ``grace`` seconds, then stop."""
        self._draining = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._core.busy():
            await asyncio.sleep(0.05)
        self._stopped = True
        self._core.stop()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)

    def stats(self) -> EngineStats:
        return self._core.stats()

    # --- submission (event loop side) --------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> TokenStream:
        self._admit(self._core.queued())
        stream = TokenStream(request, asyncio.get_running_loop(), self._core.wake)
        self._core.add(request, stream)
        return stream

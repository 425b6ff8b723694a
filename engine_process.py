"""The engine core in a child process (opt-in: ``GPTOSS_ENGINE_PROCESS=true``).

Why a process: the engine steps a transformers model whose forward is thousands of small ops,
each dispatched from Python. In one process, the HTTP side (SSE framing, JSON, middlewares)
holds the GIL part of the time: in isolation on 2 cores, a thread busy 17% of the time slows
a 16-row decode step by 15%, the same load in another process by nothing. Why not the default:
in the served benchmark on 2 cores the processes compete for cores instead (the engine's two
OpenMP threads use them fully), and the thread engine was as fast at 16 streams and ~12%
faster at 64. On a many-core GPU host the balance should tip the other way; not yet measured.

Shape: :class:`ProcessEngine` has the same interface as ``engine.Engine``. The child runs
``engine.EngineCore`` on its main thread (the only thread that touches torch) and a reader
thread for commands. Two one-way pipes link them: commands go down (``add``, ``cancel``,
``stop``); each step comes up as one message with every request's new events and a stats
snapshot. A parent thread reads those and hands each event loop its events with one
``call_soon_threadsafe``. The child ignores SIGINT/SIGTERM (the parent drains it on shutdown)
and stops when its command pipe closes, so it never outlives the server.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from engine import Deliveries, EngineConfig, EngineCore, EngineStats, FrontEnd, TokenStream, post_to_loops
from engine_types import GenerationRequest

logger = logging.getLogger(__name__)

_EMPTY_STATS = EngineStats(running=0, waiting=0, kv_tokens=0, steps=0, prompt_tokens=0, generated_tokens=0, finished=0)


class ProcessEngine(FrontEnd):
    """Continuous batching in a child process, bridged to asyncio (see module docstring).

    ``prepare()`` runs on a thread of this process before the child starts (it may download the
    checkpoint) and returns the loader: a picklable callable that builds the model in the child.
    """

    def __init__(
        self,
        prepare: Callable[[], Callable[[], Any]],
        config: EngineConfig,
        *,
        max_context: int | None = None,
        log_level: str = "INFO",
    ) -> None:
        super().__init__(config)
        self._prepare = prepare
        self._max_context = max_context or 0
        self._log_level = log_level
        self._streams: dict[int, TokenStream] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._commands: Any = None
        self._proc: Any = None
        self._link: threading.Thread | None = None
        self._snapshot = _EMPTY_STATS
        self._submitted = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and load the model there (returns at once; see :meth:`wait_ready`)."""
        self._link = threading.Thread(target=self._link_main, name="gptoss-engine-link", daemon=True)
        self._link.start()
        # Runs before multiprocessing's own exit hook (atexit is last-in, first-out), which would
        # otherwise wait forever on a child that ignores SIGTERM.
        atexit.register(self._close_at_exit)

    def _close_at_exit(self) -> None:
        self._stopped = True
        self._send(("stop",))

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it starts)."""
        return self._proc.pid if self._proc is not None else None

    async def shutdown(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish within ``grace`` seconds, then stop the child."""
        self._draining = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._streams:
            await asyncio.sleep(0.05)
        self._stopped = True
        await asyncio.get_running_loop().run_in_executor(None, self._stop_child)

    def _stop_child(self) -> None:
        self._send(("stop",))
        if self._proc is not None:
            self._proc.join(10.0)
            if self._proc.is_alive():
                logger.warning("The engine process did not stop in time; terminating it")
                self._proc.kill()
                self._proc.join(5.0)
        if self._link is not None:
            self._link.join(5.0)
        atexit.unregister(self._close_at_exit)

    def stats(self) -> EngineStats:
        """The child's counters after its latest step, plus requests it has not picked up yet."""
        snap = self._snapshot
        return replace(snap, waiting=snap.waiting + max(0, self._submitted - snap.received), kv_capacity=self.config.kv_cache_tokens)

    # --- submission (event loop side) --------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> TokenStream:
        self._admit(self.stats().waiting)
        rid = next(self._ids)
        stream = TokenStream(request, asyncio.get_running_loop(), lambda: self._send(("cancel", rid)))
        self._streams[rid] = stream
        self._submitted += 1
        self._send(("add", rid, request))
        return stream

    def _send(self, msg: tuple) -> None:
        if self._commands is None:
            return
        with self._send_lock:
            try:
                self._commands.send(msg)
            except (OSError, ValueError):  # the child is gone; the link thread reports it
                pass

    # --- link thread ---------------------------------------------------------------------------------
    def _link_main(self) -> None:
        try:
            loader = self._prepare()
            if self._stopped:  # shut down while preparing
                return
            ctx = multiprocessing.get_context("spawn")  # no fork: threads, CUDA and OpenMP state stay here
            cmd_recv, cmd_send = ctx.Pipe(duplex=False)
            evt_recv, evt_send = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(
                target=_child_main,
                args=(cmd_recv, evt_send, loader, self.config, self._max_context, self._log_level),
                name="gptoss-engine",
                daemon=True,
            )
            self._proc.start()
            cmd_recv.close()
            evt_send.close()
            self._commands = cmd_send
            msg = evt_recv.recv()
        except BaseException as exc:  # reported through /health and every request
            logger.exception("The engine process failed to start")
            self.load_error = exc
            self._ready.set()
            return
        if msg[0] == "load_error":
            logger.error("Model failed to load in the engine process: %s", msg[1])
            self.load_error = RuntimeError(msg[1])
            self._ready.set()
            return
        _, self._max_context, self.config.kv_cache_tokens = msg
        self._ready.set()
        try:
            while True:
                msg = evt_recv.recv()
                if msg[0] == "step":
                    self._snapshot = msg[2]
                    self._dispatch(msg[1])
                elif msg[0] == "stopped":
                    break
        except (EOFError, OSError):
            pass
        if not self._stopped:
            self._proc.join(1.0)
            logger.error(
                "The engine process exited unexpectedly (exit code %s); failing %d requests",
                self._proc.exitcode,
                len(self._streams),
            )
            self.load_error = RuntimeError(f"the engine process exited (code {self._proc.exitcode})")
        self._fail_all(RuntimeError("the engine process stopped"))

    def _dispatch(self, items: list[tuple[int, Any]]) -> None:
        out: Deliveries = []
        for rid, payload in items:
            stream = self._streams.get(rid)
            if stream is None:
                continue
            if isinstance(payload, str):  # the error that ended this request, as text
                payload = RuntimeError(payload)
                self._streams.pop(rid, None)
            elif payload and payload[-1].finish_reason is not None:
                self._streams.pop(rid, None)
            out.append((stream, payload))
        post_to_loops(out)

    def _fail_all(self, exc: BaseException) -> None:
        streams, self._streams = self._streams, {}
        post_to_loops([(stream, exc) for stream in streams.values()])


class _RemoteHandle:
    """The child's stand-in for a parent's stream: its id, and whether it was cancelled."""

    __slots__ = ("rid", "cancelled")

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.cancelled = False


def _child_main(commands: Any, events: Any, loader: Callable[[], Any], config: EngineConfig, max_context: int, log_level: str) -> None:
    """Entry point of the engine process."""
    # The parent owns shutdown: Ctrl-C or a SIGTERM to the process group must not cut off the drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s [%(levelname)s] [engine] %(name)s: %(message)s")
    handles: dict[int, _RemoteHandle] = {}
    core: EngineCore

    def sink(deliveries: Deliveries) -> None:
        out: list[tuple[int, Any]] = []
        for handle, payload in deliveries:
            if isinstance(payload, BaseException):
                handles.pop(handle.rid, None)
                out.append((handle.rid, f"generation failed: {type(payload).__name__}: {payload}"))
                continue
            if payload and payload[-1].finish_reason is not None:
                handles.pop(handle.rid, None)
            out.append((handle.rid, payload))
        events.send(("step", out, core.stats()))

    core = EngineCore(loader, config, sink, max_context=max_context)
    try:
        core.load()
    except BaseException as exc:
        logging.getLogger(__name__).exception("Model failed to load")
        events.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return

    def read_commands() -> None:
        try:
            while True:
                msg = commands.recv()
                if msg[0] == "add":
                    handle = handles[msg[1]] = _RemoteHandle(msg[1])
                    core.add(msg[2], handle)
                elif msg[0] == "cancel":
                    cancelled = handles.get(msg[1])
                    if cancelled is not None:
                        cancelled.cancelled = True
                        core.wake()
                elif msg[0] == "stop":
                    break
        except (EOFError, OSError):
            logger.warning("The server process went away; stopping the engine")
        core.stop()

    events.send(("ready", core.max_context, config.kv_cache_tokens))
    threading.Thread(target=read_commands, name="gptoss-engine-commands", daemon=True).start()
    core.loop()  # returns after stop, once everything left has been aborted
    events.send(("stopped",))

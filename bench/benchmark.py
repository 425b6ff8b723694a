"""Throughput and latency of our server against peers, on the same model directory, in one run.

Starts each server in turn on this machine, sends C concurrent streaming requests (greedy, fixed
output length), and prints output tokens/s, TTFT and latency percentiles per concurrency level,
with ratios against `transformers serve --continuous-batching` and against raw `model.generate`
(static batch, no server).

Workloads (``--workload``):
  completions  /v1/completions, one fixed prompt (the default; what the README's table measures)
  chat         /v1/chat/completions, a distinct ~170-token user message per request (no prefix
               shared beyond the system prompt), ``stream_options.include_usage``; tokens are
               counted from usage, TTFT is the first chunk carrying content, reasoning or a tool call

Peers: ours, ``ours:VAR=value+VAR2=value`` (our server with extra environment), ours-vllm (our
server with GPTOSS_ENGINE=vllm, run by .venv-vllm's python or $GPTOSS_VLLM_PYTHON;
``ours-vllm:VAR=value`` too), vllm (vLLM's own OpenAI server from the same python), transformers,
transformers-cb, generate. ours-vllm and vllm get the same vLLM settings (bf16, --max-model-len,
prefix caching on, --vllm-kv-gib, --max-num-seqs, --max-batched-tokens); the table
"our layer over vLLM" then gives the throughput ratio and TTFT difference between the two.

    python bench/benchmark.py                       # ours, transformers serve (+CB), model.generate
    python bench/benchmark.py --peers ours,vllm     # vLLM's CPU build from .venv-vllm
    python bench/benchmark.py --peers ours,transformers-cb --concurrency 16 --interleave 5   # paired rounds
    python bench/benchmark.py --peers ours,ours:GPTOSS_GQA_ATTENTION=false --concurrency 16 --interleave 5
    python bench/benchmark.py --peers ours-vllm,vllm --workload chat --concurrency 16 64 --interleave 5

With ``--workload chat`` the model is by default a rewired copy of --model-dir whose greedy output
is valid Harmony (``--script analysis``, see scripted_model): random weights write tokens that are
not Harmony, which our parser streams as raw content token by token while vLLM's holds them back
and sends them in one chunk at the end, so neither TTFT nor per-token costs would compare.
Both servers then stream one chunk per token from the 4th generated token on (the first three
are the header ``<|channel|>analysis<|message|>``), so TTFT is the time to that 4th token.

Not a test: numbers depend on the machine. The README's Performance table comes from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
logger = logging.getLogger("bench")

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
BENCH_KEY = "sk-bench-local-0123456789abcdef"
#: The python that runs vLLM (its CPU build) and our server on it.
VLLM_PYTHON = os.environ.get("GPTOSS_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
#: vLLM settings that ours-vllm and vllm both get (filled from the command line in main).
VLLM: dict[str, str] = {"kv_gib": "2", "max_num_seqs": "64", "max_batched_tokens": "2048", "max_model_len": "4096"}

# Distinct chat prompts: ~165 common words (one o200k token each) drawn from a seeded RNG per request.
_WORDS_TEXT = (
    "the keeper lamp tower light sea ship storm night wind wave rock shore harbour boat sail rope bell door "
    "stair window glass oil wick flame beam fog rain cloud sky star moon sun morning evening day week year "
    "letter bottle message paper ink hand voice song story book map chart island coast cliff sand stone wall "
    "house room table chair bed fire bread fish salt water tide current north south east west mile hour "
    "old young small large dark bright cold warm quiet loud slow fast long short deep high low far near "
    "keep find read write send wait watch walk climb open close hold turn look hear call answer remember "
    "before after again always never often once twice every each other same different first last next"
)
_WORDS = _WORDS_TEXT.split()
CHAT_WORDS_PER_PROMPT = 165


def chat_prompt(n: int) -> str:
    """The user message of request ``n``: deterministic, distinct from the first word on."""
    import random

    rng = random.Random(n)
    return f"Request {n}: " + " ".join(rng.choice(_WORDS) for _ in range(CHAT_WORDS_PER_PROMPT))


@dataclass
class Result:
    server: str
    concurrency: int
    tokens_per_s: float
    ttft_p50: float
    ttft_p95: float
    lat_p50: float
    lat_p95: float
    health_p99_ms: float | None = None
    prompt_tokens: float | None = None  # mean per request, from usage (chat workload)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Server:
    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], port: int, model: str, headers: dict[str, str],
        extra: dict[str, Any] | None = None,
    ):
        self.name, self.port, self.model, self.headers = name, port, model, headers
        self.extra = extra or {}  # request fields this server accepts beyond the common ones
        self.sent = 0  # requests sent so far: numbers the chat prompts, so none repeats on one server
        self.log = open(REPO / "bench-results" / (re.sub(r"[^\w.-]", "_", name) + ".log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited (see bench-results/{self.name}.log)")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def stop(self) -> None:
        """Stop the server and its whole process tree (BentoML workers run in their own sessions)."""
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for child in tree:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


async def _sse_lines(response: httpx.Response):
    """Lines split on CR/LF only, as SSE defines them: sampled text may carry raw U+2028 or
    U+0085, which ``aiter_lines`` (str.splitlines) would also split on, cutting a JSON payload."""
    buf = ""
    async for text in response.aiter_text():
        buf += text
        *lines, buf = buf.replace("\r\n", "\n").split("\n")
        for line in lines:
            yield line
    if buf:
        yield buf


# Sampling settings of every request (greedy unless --temperature / --top-p say otherwise).
SAMPLING: dict[str, float] = {"temperature": 0.0}


# One request's (TTFT, latency, completion tokens, prompt tokens or None).
Sample = tuple[float, float, int, int | None]


async def _one(client: httpx.AsyncClient, srv: Server, max_tokens: int, workload: str = "completions") -> Sample:
    if workload == "chat":
        return await _one_chat(client, srv, max_tokens)
    body = {
        "model": srv.model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        **SAMPLING,
        "stream": True,
        **srv.extra,
    }
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    async with client.stream("POST", srv.base + "/v1/completions", json=body, headers=srv.headers) as r:
        r.raise_for_status()
        async for line in _sse_lines(r):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            if data.get("choices") and data["choices"][0].get("text"):
                if ttft is None:
                    ttft = time.perf_counter() - t0
                chunks += 1
    total = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else chunks
    return ttft if ttft is not None else total, total, tokens, None


# Delta fields that carry generated output: ours sends reasoning as reasoning_content and/or
# reasoning (GPTOSS_REASONING_FIELD), vLLM's gpt-oss chat as reasoning.
_OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls")


async def _one_chat(client: httpx.AsyncClient, srv: Server, max_tokens: int) -> Sample:
    """One streaming chat completion with a prompt no other request of this server had.

    TTFT is the first chunk with output of any kind (content, reasoning or a tool call): both
    servers send a role chunk first (ours before the first token, vLLM's with it), which is not
    output. Completion tokens come from the usage chunk.
    """
    n, srv.sent = srv.sent, srv.sent + 1
    body = {
        "model": srv.model,
        "messages": [{"role": "user", "content": chat_prompt(n)}],
        "max_tokens": max_tokens,
        **SAMPLING,
        "stream": True,
        **srv.extra,
    }
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    async with client.stream("POST", srv.base + "/v1/chat/completions", json=body, headers=srv.headers) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"{srv.name}: HTTP {r.status_code}: {r.text[:500]}")
        async for line in _sse_lines(r):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("error"):
                raise RuntimeError(f"{srv.name}: error in the stream: {data['error']}")
            if data.get("usage"):
                usage = data["usage"]
            choices = data.get("choices")
            if choices and any(choices[0].get("delta", {}).get(k) for k in _OUTPUT_FIELDS):
                if ttft is None:
                    ttft = time.perf_counter() - t0
                chunks += 1
    total = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else chunks
    return ttft if ttft is not None else total, total, tokens, usage["prompt_tokens"] if usage else None


async def _health_probe(srv: Server, stop: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            await client.get(srv.base + "/health")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)


async def run_level(
    srv: Server, concurrency: int, max_tokens: int, rounds: int, probe: bool, workload: str = "completions"
) -> Result:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _one(client, srv, 8, workload)  # warm-up
        stop = asyncio.Event()
        health: list[float] = []
        probe_task = asyncio.create_task(_health_probe(srv, stop, health)) if probe else None

        async def worker() -> list[Sample]:
            return [await _one(client, srv, max_tokens, workload) for _ in range(rounds)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker() for _ in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
        stop.set()
        if probe_task:
            await probe_task
    ttfts = [r[0] for r in results]
    lats = [r[1] for r in results]
    prompts = [r[3] for r in results if r[3] is not None]
    return Result(
        srv.name,
        concurrency,
        sum(r[2] for r in results) / wall,
        _pct(ttfts, 0.5),
        _pct(ttfts, 0.95),
        _pct(lats, 0.5),
        _pct(lats, 0.95),
        _pct(health, 0.99) * 1000 if health else None,
        statistics.mean(prompts) if prompts else None,
    )


def bench_generate(model_dir: Path, levels: list[int], max_tokens: int) -> list[Result]:
    """Raw ``model.generate`` with a static batch of C identical prompts: no server at all."""
    import torch
    from transformers import AutoModelForCausalLM

    from gptoss.harmony.vocab import load_encoding

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    ids = torch.tensor([load_encoding().encode(PROMPT, allowed_special="all")])
    out = []
    for c in levels:
        x = ids.repeat(c, 1)
        sampled = {"do_sample": True, "top_k": 0, **SAMPLING} if SAMPLING["temperature"] else {"do_sample": False}
        kw = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, attention_mask=torch.ones_like(x), **sampled)
        model.generate(x, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        t0 = time.perf_counter()
        model.generate(x, **kw)
        dt = time.perf_counter() - t0
        out.append(Result("model.generate", c, c * max_tokens / dt, float("nan"), float("nan"), dt, dt))
    del model
    return out


# The words a scripted model writes, over and over (distinct ordinary tokens in this order).
_SCRIPT_TEXT = (
    " The keeper climbed the winding stairs to the lamp room and watched grey waves break on rocks below"
    " while gulls circled over a harbour where one small boat rowed toward distant lights"
)
SCRIPT_VERSION = 1


def scripted_model(src: Path, channel: str) -> Path:
    """A copy of ``src`` whose greedy output is valid Harmony: ``<|channel|>CHANNEL<|message|>`` and
    then a cycle of ordinary words until max_tokens (``analysis``: all reasoning; ``final``: all content).

    A random-weight model writes tokens that are not Harmony; our parser then passes them on as
    content token by token, while vLLM's holds them in its header state and sends everything in one
    chunk at the end, so TTFT and per-token costs would not compare. Here a bigram chain is wired
    into the weights: the embedding row of each chain token is scaled up (x1000) so that it
    dominates the residual stream, and the lm_head row of its successor points along it (logit
    4*sqrt(hidden) against ~1 for the random rows), so the last token alone picks the next one.
    Prompts start it: they end in ``<|start|>assistant``. Shapes, and so the compute per token, are
    those of ``src``; built once next to it.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from gptoss.engine.tiny_model import BUILD_MARKER
    from gptoss.harmony.vocab import load_encoding

    out = src.parent / f"{src.name}-harmony-{channel}"
    marker = out / "bench-script.json"
    weights = src / "model.safetensors"
    recipe = {"version": SCRIPT_VERSION, "source": str(src), "mtime": weights.stat().st_mtime, "channel": channel}
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return out
    enc = load_encoding()
    header = enc.encode(f"assistant<|channel|>{channel}<|message|>", allowed_special="all")
    words = [t for t in dict.fromkeys(enc.encode(_SCRIPT_TEXT)) if t not in header]
    chain = header + words
    tensors = load_file(weights)
    emb = tensors["model.embed_tokens.weight"].float()
    head = tensors["lm_head.weight"].float()
    # <|message|> and the last word are both followed by the first word: one input row for both.
    emb[header[-1]] = emb[words[-1]]
    for tok in chain:
        emb[tok] = emb[tok] * 1000
    for tok, nxt in zip(chain, chain[1:]):
        head[nxt] = emb[tok] / emb[tok].norm() * 4
    tensors["model.embed_tokens.weight"] = emb.to(torch.bfloat16)
    tensors["lm_head.weight"] = head.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".json" and f.name != BUILD_MARKER:  # not tiny_model's marker: not that build
            shutil.copy(f, out / f.name)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    marker.write_text(json.dumps(recipe))
    logger.info("scripted model (%s, %d-token cycle) in %s", channel, len(words), out)
    return out


def _vllm_cpu_env() -> dict[str, str]:
    """Environment of both vLLM peers: the CPU platform, its KV space, the Harmony vocabulary offline."""
    from gptoss.harmony.vocab import ensure_vocab
    from gptoss.settings import get_settings

    return {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": VLLM["kv_gib"],
        "TIKTOKEN_ENCODINGS_BASE": str(ensure_vocab(get_settings().cache_dir)),
    }


def start_server(name: str, model_dir: Path) -> Server:
    """``ours:VAR=value+VAR2=value`` is our server with extra environment (an A/B of a setting)."""
    port = _free_port()
    py = sys.executable
    if name == "ours-vllm" or name.startswith("ours-vllm:"):
        # Our server on vLLM, with the settings the vllm peer gets as flags (GPTOSS_VLLM_* -> engine_args).
        extra = dict(kv.split("=", 1) for kv in name.partition(":")[2].split("+") if kv)
        env = {
            "GPTOSS_MODEL": str(model_dir), "GPTOSS_API_KEYS": BENCH_KEY, "GPTOSS_SERVED_MODEL_NAME": "bench",
            "GPTOSS_ENGINE": "vllm", "GPTOSS_DTYPE": "bfloat16",
            "GPTOSS_VLLM_MAX_MODEL_LEN": VLLM["max_model_len"],
            "GPTOSS_VLLM_PREFIX_CACHING": "true",
            "GPTOSS_VLLM_CPU_KV_CACHE_GIB": VLLM["kv_gib"],
            "GPTOSS_VLLM_GPU_MEMORY_UTILIZATION": "0.3",
            "GPTOSS_MAX_RUNNING": VLLM["max_num_seqs"],
            "GPTOSS_MAX_BATCHED_TOKENS": VLLM["max_batched_tokens"],
            **_vllm_cpu_env(),
            **extra,
        }
        cmd = [VLLM_PYTHON, "-m", "bentoml", "serve", "service:GptOss", "--port", str(port), "--host", "127.0.0.1"]
        return Server(
            name, cmd, env, port, "bench", {"Authorization": f"Bearer {BENCH_KEY}"},
            {"stream_options": {"include_usage": True}},  # ours ignores unknown fields: ignore_eos would be a no-op
        )
    if name == "ours" or name.startswith("ours:"):
        extra = dict(kv.split("=", 1) for kv in name.partition(":")[2].split("+") if kv)
        env = {
            "GPTOSS_MODEL": str(model_dir), "GPTOSS_API_KEYS": BENCH_KEY, "GPTOSS_SERVED_MODEL_NAME": "bench", **extra
        }
        cmd = [py, "-m", "bentoml", "serve", "service:GptOss", "--port", str(port), "--host", "127.0.0.1"]
        return Server(
            name, cmd, env, port, "bench", {"Authorization": f"Bearer {BENCH_KEY}"},
            {"stream_options": {"include_usage": True}},
        )
    if name.startswith("transformers"):
        cmd = [
            str(Path(py).parent / "transformers"), "serve", str(model_dir), "--port", str(port),
            "--device", "cpu", "--dtype", "bfloat16",
        ]
        if name == "transformers-cb":
            cmd.append("--continuous-batching")
        return Server(name, cmd, {}, port, str(model_dir), {})  # strict schema: no extra fields
    if name == "vllm":
        # vLLM's own OpenAI server, flags as ../shared/peers/vllm-cpu.sh has them (the module, not the
        # `vllm` console script: that looks up package metadata named "vllm", this one is "vllm-cpu").
        cmd = [
            VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--port", str(port), "--host", "127.0.0.1", "--served-model-name", "bench",
            "--max-model-len", VLLM["max_model_len"], "--dtype", "bfloat16", "--gpu-memory-utilization", "0.3",
            "--enable-prefix-caching", "--max-num-seqs", VLLM["max_num_seqs"],
            "--max-num-batched-tokens", VLLM["max_batched_tokens"],
        ]
        return Server(
            name, cmd, _vllm_cpu_env(), port, "bench", {},
            {"stream_options": {"include_usage": True}, "ignore_eos": True},
        )
    raise ValueError(name)


def print_table(results: list[Result], levels: list[int]) -> str:
    by = {(r.server, r.concurrency): r for r in results}
    lines = [
        "| server | C | output tok/s | vs transformers CB | vs model.generate | TTFT p50 / p95 (s) "
        "| latency p50 / p95 (s) | /health p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.server for r in results):
        for c in levels:
            r = by.get((name, c))
            if r is None:
                continue
            cb = by.get(("transformers-cb", c))
            gen = by.get(("model.generate", c))
            ratio_cb = f"{r.tokens_per_s / cb.tokens_per_s:.2f}x" if cb else "-"
            ratio_gen = f"{r.tokens_per_s / gen.tokens_per_s:.2f}x" if gen else "-"
            health = f"{r.health_p99_ms:.0f}" if r.health_p99_ms is not None else "-"
            ttft = "-" if name == "model.generate" else f"{r.ttft_p50:.3f} / {r.ttft_p95:.3f}"
            lines.append(
                f"| {name} | {c} | {r.tokens_per_s:.0f} | {ratio_cb} | {ratio_gen} | {ttft} | "
                f"{r.lat_p50:.2f} / {r.lat_p95:.2f} | {health} |"
            )
    return "\n".join(lines)


# The target for our layer over vLLM: under 5% of throughput, at most 20 ms of TTFT (p50).
LAYER_MAX_THROUGHPUT_LOSS = 0.05
LAYER_MAX_TTFT_MS = 20.0


def _is_ours_vllm(name: str) -> bool:
    return name == "ours-vllm" or name.startswith("ours-vllm:")


def layer_table(results: list[Result], levels: list[int]) -> str:
    """Our layer over vLLM: each ours-vllm run against the vllm peer at the same level ('' if not both)."""
    by = {(r.server, r.concurrency): r for r in results}
    lines = []
    for name in dict.fromkeys(r.server for r in results if _is_ours_vllm(r.server)):
        for c in levels:
            ours, peer = by.get((name, c)), by.get(("vllm", c))
            if ours is None or peer is None:
                continue
            ratio = ours.tokens_per_s / peer.tokens_per_s
            d50 = (ours.ttft_p50 - peer.ttft_p50) * 1000
            d95 = (ours.ttft_p95 - peer.ttft_p95) * 1000
            met = ratio >= 1 - LAYER_MAX_THROUGHPUT_LOSS and d50 <= LAYER_MAX_TTFT_MS
            prompts = "-" if ours.prompt_tokens is None else f"{ours.prompt_tokens:.0f} / {peer.prompt_tokens or 0:.0f}"
            lines.append(
                f"| {name} | {c} | {peer.tokens_per_s:.0f} | {ours.tokens_per_s:.0f} | {ratio:.3f}x | "
                f"{peer.ttft_p50 * 1000:.1f} / {ours.ttft_p50 * 1000:.1f} | {d50:+.1f} | "
                f"{peer.ttft_p95 * 1000:.1f} / {ours.ttft_p95 * 1000:.1f} | {d95:+.1f} | {prompts} | "
                f"{'met' if met else 'MISSED'} |"
            )
    if not lines:
        return ""
    return "\n".join(
        [
            f"Our layer over vLLM (target: ratio >= {1 - LAYER_MAX_THROUGHPUT_LOSS:.2f}, "
            f"TTFT p50 difference <= {LAYER_MAX_TTFT_MS:.0f} ms):",
            "",
            "| ours | C | vllm tok/s | ours tok/s | ours / vllm | TTFT p50 vllm / ours (ms) | diff (ms) "
            "| TTFT p95 vllm / ours (ms) | diff (ms) | prompt tokens ours / vllm | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *lines,
        ]
    )


def _measure(srv: Server, concurrency: int, args: argparse.Namespace) -> Result:
    """One level against one server (our own engine's server also gets the /health probe; the two
    vLLM peers get none, so that both carry the same load)."""
    probe = srv.name.startswith("ours") and not _is_ours_vllm(srv.name)
    return asyncio.run(run_level(srv, concurrency, args.max_tokens, args.rounds, probe, args.workload))


def _median_result(runs: list[Result]) -> Result:
    """Per-field medians of one server's runs at one level (interleaved mode)."""

    def med(field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    health = [r.health_p99_ms for r in runs if r.health_p99_ms is not None]
    prompts = [r.prompt_tokens for r in runs if r.prompt_tokens is not None]
    return Result(
        runs[0].server, runs[0].concurrency, med("tokens_per_s"), med("ttft_p50"), med("ttft_p95"), med("lat_p50"),
        med("lat_p95"), statistics.median(health) if health else None, statistics.median(prompts) if prompts else None,
    )


def run_interleaved(names: list[str], model_dir: Path, args: argparse.Namespace) -> tuple[list[Result], str]:
    """All servers up at once, measured in turn, ``args.interleave`` times (order reversed every other round).

    This host's speed drifts by 10-20% within minutes; pairing each of our runs with a peer run
    taken right beside it gives ratios that the drift does not decide. Returns per-level medians
    and a per-round ratio report.
    """
    servers: dict[str, Server] = {}
    runs: dict[tuple[str, int], list[Result]] = {}
    try:
        for name in names:
            servers[name] = start_server(name, model_dir)
        for name, srv in servers.items():
            srv.wait(900 if "vllm" in name else 300)
        for i in range(args.interleave):
            for name in names if i % 2 == 0 else names[::-1]:
                for c in args.concurrency:
                    r = _measure(servers[name], c, args)
                    logger.info("round %d %s c=%d: %.0f tok/s", i + 1, name, c, r.tokens_per_s)
                    runs.setdefault((name, c), []).append(r)
    finally:
        for srv in servers.values():
            srv.stop()
    lines = []
    if "ours" in names:
        for peer in (n for n in names if n != "ours"):
            for c in args.concurrency:
                ratios = [a.tokens_per_s / b.tokens_per_s for a, b in zip(runs[("ours", c)], runs[(peer, c)])]
                lines.append(
                    f"ours / {peer} at C={c}, per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
                    + f" (median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x)"
                )
    if "vllm" in names:
        for ours in (n for n in names if _is_ours_vllm(n)):
            for c in args.concurrency:
                pairs = list(zip(runs[(ours, c)], runs[("vllm", c)]))
                ratios = [a.tokens_per_s / b.tokens_per_s for a, b in pairs]
                diffs = [(a.ttft_p50 - b.ttft_p50) * 1000 for a, b in pairs]
                lines.append(
                    f"{ours} / vllm at C={c}, per round: " + ", ".join(f"{x:.3f}x" for x in ratios)
                    + f" (median {statistics.median(ratios):.3f}x, min {min(ratios):.3f}x); TTFT p50 difference: "
                    + ", ".join(f"{d:+.1f}" for d in diffs) + f" ms (median {statistics.median(diffs):+.1f} ms)"
                )
    return [_median_result(rs) for rs in runs.values()], "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="ours,transformers-cb,transformers,generate")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the 'bench' shape tiny model")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument(
        "--interleave", type=int, default=0, metavar="N",
        help="start the servers together and measure them in turn N times; report medians and per-round ratios",
    )
    ap.add_argument(
        "--workload", choices=("completions", "chat"), default="completions",
        help="completions: /v1/completions, one fixed prompt; "
        "chat: /v1/chat/completions, a distinct prompt per request",
    )
    ap.add_argument(
        "--script", choices=("none", "analysis", "final"), default=None,
        help="serve a copy of the model rewired to write valid Harmony on this channel (default: analysis for "
        "--workload chat, none for completions; see scripted_model)",
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "bench-results" / "table.md", help="where the report is written too"
    )
    vllm = ap.add_argument_group("vLLM settings, the same for ours-vllm and vllm")
    vllm.add_argument("--vllm-kv-gib", default="2", help="KV-cache GiB (VLLM_CPU_KVCACHE_SPACE)")
    vllm.add_argument("--max-num-seqs", default="64", help="sequences decoded together (ours: GPTOSS_MAX_RUNNING)")
    vllm.add_argument("--max-batched-tokens", default="2048", help="tokens per engine step")
    vllm.add_argument("--max-model-len", default="4096", help="context window")
    args = ap.parse_args()
    if args.script is None:
        args.script = "analysis" if args.workload == "chat" else "none"
    VLLM.update(
        kv_gib=args.vllm_kv_gib, max_num_seqs=args.max_num_seqs, max_batched_tokens=args.max_batched_tokens,
        max_model_len=args.max_model_len,
    )
    SAMPLING["temperature"] = args.temperature
    if args.top_p < 1.0:
        SAMPLING["top_p"] = args.top_p
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (REPO / "bench-results").mkdir(exist_ok=True)

    from gptoss.engine.tiny_model import build_tiny_model, tiny_model_dir
    from gptoss.settings import get_settings

    model_dir = args.model_dir or build_tiny_model(tiny_model_dir(get_settings().cache_dir, "bench"), "bench")
    model_dir = Path(model_dir).expanduser().resolve()
    if args.script != "none":
        model_dir = scripted_model(model_dir, args.script)
    results: list[Result] = []
    peers = args.peers.split(",")
    rounds_report = ""
    if args.interleave:
        results, rounds_report = run_interleaved([n for n in peers if n != "generate"], model_dir, args)
        peers = [n for n in peers if n == "generate"]
    for name in peers:
        if name == "generate":
            results += bench_generate(model_dir, args.concurrency, args.max_tokens)
            continue
        srv = start_server(name, model_dir)
        try:
            srv.wait(900 if "vllm" in name else 300)
            for c in args.concurrency:
                logger.info("%s c=%d", name, c)
                results.append(_measure(srv, c, args))
                logger.info("%s", results[-1])
        finally:
            srv.stop()
    cpu = platform.processor() or platform.machine()
    weights = "random weights" + (f", scripted Harmony output on {args.script}" if args.script != "none" else "")
    workload = (
        "streaming /v1/completions (one fixed prompt)" if args.workload == "completions"
        else "streaming /v1/chat/completions (distinct ~170-token user messages)"
    )
    vllm_peers = any(n == "vllm" or _is_ours_vllm(n) for n in args.peers.split(","))
    header = (
        f"Machine: {len(os.sched_getaffinity(0))} cores ({cpu}), model {model_dir.name} (bf16, {weights}), "
        f"{args.max_tokens} new tokens, "
        + ("greedy" if not args.temperature else ", ".join(f"{k} {v}" for k, v in SAMPLING.items()))
        + f", {workload}, {args.rounds} requests per client"
        + (f"; servers measured in turn {args.interleave} times, medians" if args.interleave else "")
        + ".\n"
        + (
            f"vLLM (both peers): bf16, max model len {VLLM['max_model_len']}, prefix caching on, "
            f"KV {VLLM['kv_gib']} GiB, max_num_seqs {VLLM['max_num_seqs']}, "
            f"max_num_batched_tokens {VLLM['max_batched_tokens']}, python {VLLM_PYTHON}.\n"
            if vllm_peers else ""
        )
    )
    layer = layer_table(results, args.concurrency)
    table = (
        header + "\n" + print_table(results, args.concurrency)
        + (f"\n\n{layer}" if layer else "")
        + (f"\n\n{rounds_report}" if rounds_report else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    sys.stdout.write(table + "\n")


if __name__ == "__main__":
    main()

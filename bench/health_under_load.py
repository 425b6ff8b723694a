"""/health latency while clients post very large prompts: is the event loop ever blocked?

Starts our server (tiny model), then probes ``GET /health`` every 20 ms from one client while
``--clients`` others each post ``--rounds`` chat requests with a ``--prompt-mb`` MB prompt (they
are refused with 400 context_length_exceeded after rendering and tokenising). Prints the
probe's p50 / p99 / max latency under that load and idle, and the large requests' latency.

    python bench/health_under_load.py                  # 10 clients, 1 MB prompts
    python bench/health_under_load.py --clients 4 --prompt-mb 4

Not a test: numbers depend on the machine. docs/performance.md quotes this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-bench-health-under-load-000000"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _probe(base: str, stop: threading.Event, out: list[float]) -> None:
    """On its own thread and connection, so the load generator's work does not show in its timings."""
    with httpx.Client(base_url=base, timeout=30) as http:
        while not stop.is_set():
            started = time.perf_counter()
            r = http.get("/health")
            out.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
            time.sleep(0.02)


def _probing(base: str, out: list[float]) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=_probe, args=(base, stop, out))
    thread.start()
    return thread, stop


async def _measure(base: str, clients: int, rounds: int, prompt_mb: float) -> dict[str, float]:
    text = "word " * int(prompt_mb * 1024 * 1024 / 5)
    body = json.dumps({"model": "gpt-oss-20b", "messages": [{"role": "user", "content": text}], "max_tokens": 4})
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    idle: list[float] = []
    thread, stop = _probing(base, idle)
    await asyncio.sleep(3)
    stop.set()
    thread.join()

    loaded: list[float] = []
    big: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        thread, stop = _probing(base, loaded)

        async def client() -> None:
            for _ in range(rounds):
                started = time.perf_counter()
                r = await http.post("/v1/chat/completions", content=body.encode(), headers=headers)
                big.append(time.perf_counter() - started)
                assert r.status_code in (200, 400), r.text

        await asyncio.gather(*(client() for _ in range(clients)))
        stop.set()
        thread.join()
    return {
        "idle_p50_ms": statistics.median(idle), "idle_p99_ms": _pct(idle, 0.99),
        "load_p50_ms": statistics.median(loaded), "load_p99_ms": _pct(loaded, 0.99), "load_max_ms": max(loaded),
        "probes_under_load": len(loaded), "large_request_p50_s": statistics.median(big),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10, help="large requests per client")
    ap.add_argument("--prompt-mb", type=float, default=1.0)
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()
    env = {**os.environ, "GPTOSS_MODEL": "tiny", "GPTOSS_API_KEYS": KEY, "GPTOSS_ACCESS_LOG": "false",
           "BENTOML_HOME": tempfile.mkdtemp(prefix="bentoml_home_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:GptOss", "--port", str(args.port), "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        result = asyncio.run(_measure(base, args.clients, args.rounds, args.prompt_mb))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    print(f"{args.clients} clients x {args.rounds} requests of {args.prompt_mb} MB prompts")
    for k, v in result.items():
        print(f"  {k:>22}: {v:.1f}" if isinstance(v, float) else f"  {k:>22}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What structured output costs: throughput of a batch with and without grammar-constrained requests.

Starts our server on each model shape and keeps C closed-loop clients busy for a fixed time with
streaming /v1/chat/completions (a distinct prompt per request), greedy, on a copy of the random
model rewired to write valid Harmony (``--script analysis`` of benchmark.py). In the ``plain`` run no request
is constrained; in the ``half`` run every second client asks for a JSON schema
(``response_format: json_schema`` with a reasoning budget), so the batch always holds about C/2
constrained rows. Prints output tokens/s over all requests for each run, and the ratio half/plain
(the structured-output target is >= 0.85 at 16 streams) per round and their median, plus the
tokens/s of each kind of request. Plain and constrained runs alternate, ``--rounds`` times.

    python bench/structured.py                          # shapes test and bench, 1 and 16 streams
    python bench/structured.py --shapes bench --concurrency 16 --seconds 60

Not a test: numbers depend on the machine (run it on a quiet one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchmark import _sse_lines, chat_prompt, scripted_model, start_server  # noqa: E402

logger = logging.getLogger("bench.structured")

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "tags": {"type": "array", "items": {"enum": ["sea", "storm", "light", "letter"]}, "maxItems": 4},
    },
    "required": ["title", "year", "tags"],
    "additionalProperties": False,
}
# Harmony's stop tokens banned: an unconstrained request runs its whole max_tokens; a constrained
# one reasons for its whole budget.
NO_STOP = {str(t): -100 for t in (199999, 200002, 200007, 200012)}


async def _request(client: httpx.AsyncClient, srv, n: int, constrained: bool, max_tokens: int) -> int:
    body: dict = {
        "model": srv.model,
        "messages": [{"role": "user", "content": chat_prompt(n)}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Both kinds: every row then takes the same sampler path, so only the grammar differs. A
        # constrained answer still ends: where the grammar allows only a stop token, it is taken.
        "logit_bias": NO_STOP,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "book", "schema": SCHEMA}}
        # Reasoning then JSON fill about max_tokens, as a plain request does: both kinds cost the
        # same prefills per output token, so the ratio is the grammar's per-token cost.
        body["max_reasoning_tokens"] = max(1, max_tokens - 32)
    tokens = 0
    async with client.stream("POST", srv.base + "/v1/chat/completions", json=body, headers=srv.headers) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        async for line in _sse_lines(r):
            if line.startswith("data: {"):
                data = json.loads(line[6:])
                if data.get("error"):
                    raise RuntimeError(str(data["error"]))
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
    return tokens


async def run(srv, concurrency: int, constrained_share: float, seconds: float, max_tokens: int) -> dict[str, float]:
    """Closed loop for ``seconds``: tokens/s of all requests, and of each kind."""
    done: dict[bool, int] = {True: 0, False: 0}
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def client_loop(i: int) -> None:
        constrained = i < round(concurrency * constrained_share)
        async with httpx.AsyncClient(timeout=600) as client:
            while time.perf_counter() < stop_at:
                tokens = await _request(client, srv, next(counter) + srv.sent, constrained, max_tokens)
                done[constrained] += tokens  # after the await: `+= await` would read the count before it

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    srv.sent += 100_000
    return {"all": (done[True] + done[False]) / elapsed, "constrained": done[True] / elapsed,
            "plain": done[False] / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["test", "bench"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seconds", type=float, default=40.0, help="closed-loop time per run")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved plain / constrained runs per level")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    (REPO / "bench-results").mkdir(exist_ok=True)
    from gptoss.engine.tiny_model import build_tiny_model, tiny_model_dir
    from gptoss.settings import get_settings

    rows = []
    for shape in args.shapes:
        # Rewired so that greedy output is valid Harmony (an analysis message), as a real model's
        # is: random weights write invalid Harmony, which the server passes through unparsed,
        # so plain requests would skip the Harmony parsing that constrained ones pay for.
        model_dir = scripted_model(build_tiny_model(tiny_model_dir(get_settings().cache_dir, shape), shape), "analysis")
        srv = start_server("ours", Path(model_dir))
        try:
            srv.wait(300)
            asyncio.run(run(srv, 2, 0.5, 5, 32))  # warm-up: both kinds, grammar cache filled
            for c in args.concurrency:
                share = 0.5 if c > 1 else 1.0
                runs = []
                for r in range(args.rounds):  # interleaved, so drift on the host hits both alike
                    plain = asyncio.run(run(srv, c, 0.0, args.seconds, args.max_tokens))
                    mixed = asyncio.run(run(srv, c, share, args.seconds, args.max_tokens))
                    runs.append((plain, mixed))
                    logger.info("%s c=%d round %d: plain %.1f tok/s, %d%% constrained %.1f tok/s (%.2f)", shape, c, r,
                                plain["all"], share * 100, mixed["all"], mixed["all"] / plain["all"])
                rows.append((shape, c, share, runs))
        finally:
            srv.stop()
    print("\n| shape | streams | constrained | tok/s, none constrained | tok/s, with constrained | ratio per round"
          " (median) | of which constrained | of which plain |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for shape, c, share, runs in rows:
        ratios = [m["all"] / p["all"] for p, m in runs]
        med = statistics.median
        print(f"| {shape} | {c} | {share:.0%} | {med(p['all'] for p, _ in runs):.1f} | "
              f"{med(m['all'] for _, m in runs):.1f} | {', '.join(f'{x:.2f}' for x in ratios)} ({med(ratios):.2f}) | "
              f"{med(m['constrained'] for _, m in runs):.1f} | {med(m['plain'] for _, m in runs):.1f} |")

if __name__ == "__main__":
    main()

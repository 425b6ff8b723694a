"""End to end with the experts in MXFP4: ``bentoml serve`` of the tiny model in gpt-oss's MXFP4 layout
(GPTOSS_MODEL=tiny-mxfp4) keeps them so, serves the API, reports its weights on /metrics, and answers
greedy requests exactly as a server of the same checkpoint dequantised at load (GPTOSS_DTYPE=bfloat16)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY, NO_STOP, RemoteServer

MODEL = "gpt-oss-20b"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = [{"role": "user", "content": "Say hello in three languages."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RemoteServer]]:
    """{'auto': experts kept in MXFP4, 'bfloat16': dequantised at load}, one after the other (light on CPU)."""
    started: dict[str, RemoteServer] = {}
    try:
        for dtype in ("auto", "bfloat16"):
            log = tmp_path_factory.mktemp(f"mxfp4-{dtype}") / "server.log"
            env = {"GPTOSS_MODEL": "tiny-mxfp4", "GPTOSS_DTYPE": dtype, "GPTOSS_API_KEYS": ADMIN_KEY}
            started[dtype] = RemoteServer(env, log_path=log)
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def weight_bytes(srv: RemoteServer, timeout: float = 10.0) -> dict[str, float]:
    """gptoss_model_weight_bytes by format (the gauge thread sets it within a second of loading)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(srv.url("/metrics"), headers=AUTH, timeout=10).text
        found = {
            m["format"]: float(m["value"])
            for m in re.finditer(r'^gptoss_model_weight_bytes\{[^}]*format="(?P<format>\w+)"[^}]*\} (?P<value>\S+)$',
                                 text, re.MULTILINE)
        }
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_serves_chat_and_completions(servers):
    client = servers["auto"].client()
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert chat.choices[0].message.role == "assistant" and 0 < chat.usage.completion_tokens <= 12
    text = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert text.choices[0].finish_reason in ("length", "stop") and 0 < text.usage.completion_tokens <= 12
    assert "MXFP4 experts" in servers["auto"].logs() and "Model weights resident" in servers["auto"].logs()


def test_metrics_report_the_resident_weights_by_format(servers):
    mxfp4, bf16 = weight_bytes(servers["auto"]), weight_bytes(servers["bfloat16"])
    assert mxfp4.get("mxfp4", 0) > 0 and mxfp4.get("bf16", 0) > 0
    assert "mxfp4" not in bf16 and bf16.get("bf16", 0) > mxfp4["bf16"]  # the experts, now in bf16


def test_greedy_chat_equals_the_dequantised_server(servers):
    def ask(srv: RemoteServer):
        r = srv.client().chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0, logit_bias=NO_STOP
        )
        message = r.choices[0].message
        return message.content, (message.model_extra or {}).get("reasoning_content"), r.usage.completion_tokens

    assert ask(servers["auto"]) == ask(servers["bfloat16"])


def test_greedy_completions_and_logprobs_equal_the_dequantised_server(servers):
    def complete(srv: RemoteServer):
        r = srv.client().completions.create(
            model=MODEL, prompt=["Once upon a time", "1, 2, 3,"], max_tokens=24, temperature=0, logprobs=2,
            logit_bias=NO_STOP,
        )
        return [(c.text, c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs) for c in r.choices]

    got, expected = complete(servers["auto"]), complete(servers["bfloat16"])
    assert got == expected and all(len(tokens) == 24 for _, tokens, _, _ in got)

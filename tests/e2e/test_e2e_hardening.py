"""What an attacker or a fuzzer tries, through the real ``bentoml serve`` and real clients.

No request may hurt another, nobody without a key may grow the server's state, and every answer
is OpenAI-shaped.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, CHAT_KEY, TPM_KEY, RemoteServer, free_port

MODEL = "gpt-oss-20b"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ERROR_FIELDS = {"message", "type", "param", "code"}

# The bodies that used to take down every generation in flight.
POISON = [
    {"logit_bias": {"99999999999999999999": 1}},
    {"logit_bias": {"201088": 5}},  # one past the vocabulary
]
# Accepted: seeds wrap modulo 2**64, so seed + i for the second choice cannot overflow.
WRAPPED_SEED = {"seed": 18446744073709551615, "n": 2, "temperature": 1.0}


def _chat(prompt: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


@pytest.mark.parametrize(
    "poison", [*POISON, WRAPPED_SEED], ids=["logit_bias_overflow", "logit_bias_vocab", "seed_wraps_n2"]
)
@pytest.mark.engines
def test_a_poisoned_request_hurts_nobody(server: RemoteServer, poison: dict):
    """Four streams run; the poisoned request gets a 400 (validated before the engine sees it); the four
    finish with full usage."""
    client = server.client()
    prompts = [f"Tell me about the number {i}." for i in range(4)]

    def stream(prompt: str) -> tuple[str, object]:
        chunks = list(
            client.chat.completions.create(
                **_chat(prompt, max_tokens=48, temperature=0), stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(
            (c.choices[0].delta.content or "") + ((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "")
            for c in chunks
            if c.choices
        )
        return text, chunks[-1].usage

    alone = [stream(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(stream, p) for p in prompts]
        time.sleep(0.3)
        for streamed in (False, True):
            r = httpx.post(
                server.url("/v1/chat/completions"), headers=AUTH, timeout=30,
                json=_chat("poison", max_tokens=8, stream=streamed, **poison),
            )
            if poison is WRAPPED_SEED:
                assert r.status_code == 200, r.text
                continue
            assert r.status_code == 400, r.text
            assert set(r.json()["error"]) == ERROR_FIELDS and r.json()["error"]["param"] in poison
        together = [f.result(timeout=120) for f in running]
    # (Token-for-token equality with the solo runs is checked in tests/test_engine_faults.py, where
    # the schedule is fixed; here the streams join the batch at varying steps.)
    for (text, usage), (_, usage_alone) in zip(together, alone):
        assert text
        assert usage.completion_tokens == usage_alone.completion_tokens == 48
        assert usage.prompt_tokens == usage_alone.prompt_tokens


def test_random_paths_without_a_key_leave_metrics_unchanged(server: RemoteServer):
    def scrape() -> list[str]:
        r = httpx.get(server.url("/metrics"), headers=AUTH, timeout=10)
        assert r.status_code == 200
        return sorted(line for line in r.text.splitlines() if not line.startswith("#"))

    time.sleep(1.5)  # let the gauges thread settle
    before = scrape()
    with httpx.Client(timeout=10) as http:
        for i in range(1000):
            method = ("GET", "POST", "DELETE", "PUT")[i % 4]
            r = http.request(method, server.url(f"/{secrets.token_hex(6)}/{i}"))
            assert r.status_code == 404 and set(r.json()["error"]) == ERROR_FIELDS
    time.sleep(1.5)
    assert scrape() == before


def test_metrics_need_a_key_and_hide_key_names_by_default(server: RemoteServer):
    r = httpx.get(server.url("/metrics"), timeout=10)
    assert r.status_code == 401 and set(r.json()["error"]) == ERROR_FIELDS
    server.client().chat.completions.create(**_chat("hi", max_tokens=2))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(server.url("/metrics"), headers=AUTH, timeout=10).text
        if 'gptoss_prompt_tokens_total{key="-"' in text:
            break
        time.sleep(0.2)
    assert 'gptoss_prompt_tokens_total{key="-"' in text
    assert 'key="admin"' not in text and 'key="chatter"' not in text


@pytest.mark.parametrize("key", [None, ADMIN_KEY, CHAT_KEY])
def test_unknown_routes_are_json_404_for_any_key(server: RemoteServer, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/files"), ("GET", "/v1"), ("GET", "/admin")):
        r = httpx.request(method, server.url(path), headers=headers, timeout=10)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith("application/json") and set(r.json()["error"]) == ERROR_FIELDS
    sdk = server.client(key or "sk-none")
    with pytest.raises(openai.NotFoundError):
        sdk.post("/embeddings", body={"model": MODEL, "input": "hi"}, cast_to=object)


def test_large_prompts_are_refused_without_stalling_the_server(server: RemoteServer):
    """Ten 1 MB prompts: each gets a 400 (context), and /health keeps answering meanwhile."""
    big = "word " * 200_000
    health: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            health.append(httpx.get(server.url("/health"), timeout=10).status_code)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(
                lambda _: httpx.post(server.url("/v1/chat/completions"), headers=AUTH, timeout=120,
                                     json=_chat(big, max_tokens=4)),
                range(10),
            ))
    finally:
        stop.set()
        prober.join()
    for r in answers:
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert health and set(health) == {200}


def test_generate_errors_are_openai_shaped(server: RemoteServer):
    r = httpx.post(server.url("/generate"), headers=AUTH, json={"prompt": "hi", "temperature": 7}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(server.url("/generate"), headers={"Authorization": f"Bearer {CHAT_KEY}"},
                   json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 403 and set(r.json()["error"]) == ERROR_FIELDS
    r = httpx.post(server.url("/generate"), headers=AUTH, json={"prompt": "hi", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200


def test_readyz_is_503_until_the_model_serves_and_limits_bodies(keys_file, tmp_path):
    """Probes while the server starts: /livez answers, /readyz only once /health does; then a 413."""
    port = free_port()
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                try:
                    ready = http.get(f"http://127.0.0.1:{port}/readyz").status_code
                    health = http.get(f"http://127.0.0.1:{port}/health").status_code
                    live = http.get(f"http://127.0.0.1:{port}/livez").status_code
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                assert live == 200
                seen.append((ready, health))
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    srv = None
    try:
        srv = RemoteServer(
            {"GPTOSS_KEYS_FILE": str(keys_file), "GPTOSS_MAX_REQUEST_BYTES": "4096"},
            log_path=tmp_path / "server.log", port=port,
        )
        time.sleep(0.5)
        stop.set()
        poller.join()
        readiness = [ready for ready, _ in seen]
        assert 503 in readiness, "the loading phase was not observed"
        first_ready = readiness.index(200)
        assert set(readiness[:first_ready]) == {503} and set(readiness[first_ready:]) == {200}
        assert all(health == 503 for ready, health in seen if ready == 503)
        r = httpx.get(srv.url("/readyz"), timeout=5)
        assert r.status_code == 200
        r = httpx.post(srv.url("/v1/chat/completions"), headers=AUTH, json=_chat("x" * 5000), timeout=10)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(srv.url("/v1/chat/completions"), headers=AUTH, json=_chat("x", max_tokens=2), timeout=60)
        assert r.status_code == 200
    finally:
        stop.set()
        poller.join()
        if srv is not None:
            srv.stop()


def test_a_server_whose_model_cannot_load_is_not_ready_in_openai_shape(tmp_path):
    """BentoML answers /readyz itself; the guard puts its 503 in OpenAI's shape, as JSON."""
    srv = RemoteServer(
        {"GPTOSS_MODEL": str(tmp_path / "no-such-model"), "GPTOSS_API_KEYS": ADMIN_KEY},
        log_path=tmp_path / "server.log", wait=False,
    )
    try:
        srv.wait_listening()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the load has failed
            h = httpx.get(srv.url("/health"), timeout=5)
            if "failed" in h.json()["error"]["message"]:
                break
            time.sleep(0.2)
        assert h.status_code == 503 and h.json()["error"]["code"] == "model_not_ready"
        r = httpx.get(srv.url("/readyz"), timeout=5)
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
        assert set(r.json()["error"]) == ERROR_FIELDS
        assert httpx.get(srv.url("/livez"), timeout=5).status_code == 200
    finally:
        srv.stop()


def test_tpm_is_reserved_at_admission(server: RemoteServer):
    """A key with tpm 400: concurrent requests cannot all pass the check before any is charged."""
    body = _chat("Count slowly from one to one hundred.", max_tokens=120, temperature=0)
    headers = {"Authorization": f"Bearer {TPM_KEY}"}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda _: httpx.post(server.url("/v1/chat/completions"), headers=headers, json=body, timeout=120), range(4)
        ))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) >= 1 and statuses.count(429) >= 2, statuses
    for r in answers:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers
        else:
            assert r.json()["usage"]["total_tokens"] <= 400


def test_a_request_larger_than_the_key_budget_can_never_fit(server: RemoteServer):
    headers = {"Authorization": f"Bearer {TPM_KEY}"}
    r = httpx.post(server.url("/v1/chat/completions"), headers=headers, timeout=60,
                   json=_chat("hi", max_tokens=1000))
    assert r.status_code == 429 and r.headers.get("x-should-retry") == "false"

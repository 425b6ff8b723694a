"""A client that disconnects, streaming or not, frees its sequence; the engine serves the others."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY, NO_STOP, RemoteServer

# The end-to-end API suite: it runs on every engine selected with --engines.
pytestmark = pytest.mark.engines

MODEL = "gpt-oss-20b"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def running_sequences(server: RemoteServer) -> float:
    text = httpx.get(server.url("/metrics"), headers=AUTH).text
    m = re.search(r"^gptoss_running_sequences(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    assert m, "gauge missing"
    return float(m.group(1))


def wait_for_running(server: RemoteServer, want: float, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_sequences(server) == want:
            return True
        time.sleep(0.2)
    return False


def test_streaming_disconnect_frees_the_slot(server: RemoteServer):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100_000, "temperature": 0, "stream": True, "logit_bias": NO_STOP}
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", server.url("/v1/completions"), json=body, headers=AUTH
    ) as r:
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
            assert wait_for_running(server, 1)
        # leaving the block closes the connection mid-stream
    assert wait_for_running(server, 0)
    # and the server still serves
    r = httpx.post(server.url("/v1/completions"), json={"model": MODEL, "prompt": "y", "max_tokens": 3}, headers=AUTH)
    assert r.status_code == 200


def test_non_streaming_disconnect_frees_the_slot(server: RemoteServer):
    def doomed():
        try:
            httpx.post(
                server.url("/v1/chat/completions"),
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100_000,
                      "logit_bias": NO_STOP},
                headers=AUTH,
                timeout=2.0,  # the client gives up long before the answer
            )
        except httpx.TimeoutException:
            pass

    t = threading.Thread(target=doomed)
    t.start()
    assert wait_for_running(server, 1)
    t.join()
    assert wait_for_running(server, 0)

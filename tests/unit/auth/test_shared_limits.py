"""Per-key limits in Redis, shared by replicas: the same rules as the in-memory limiter.

Runs against a real ``redis-server`` that the test starts on a free port (Debian's package;
.ci/run installs it). Two limiters on one Redis stand for two replicas.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from gptoss.auth import Limits, Principal
from gptoss.auth.limits import RateLimited
from tests.conftest import free_port, start_redis

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


def _replicas(url: str, prefix: str):
    from gptoss.auth.shared_limits import RedisRateLimiter

    return RedisRateLimiter(url, prefix=prefix), RedisRateLimiter(url, prefix=prefix)


def _key(name: str, limiter, **limits) -> Principal:
    return Principal(name, frozenset({"all"}), None, Limits(**limits), _limiter=limiter)


def test_rpm_holds_across_two_replicas(redis_url: str):
    a, b = _replicas(redis_url, "t-rpm")
    key_a, key_b = _key("alice", a, rpm=3), _key("alice", b, rpm=3)
    headers = a.acquire(key_a)
    assert headers["x-ratelimit-remaining-requests"] == "2"
    b.acquire(key_b)
    a.acquire(key_a)
    with pytest.raises(RateLimited) as info:
        b.acquire(key_b)
    assert 1 <= int(info.value.headers["retry-after"]) <= 60
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    other = _key("bob", b, rpm=3)  # another key has its own window
    b.acquire(other)


def test_concurrency_holds_across_replicas_and_is_released(redis_url: str):
    a, b = _replicas(redis_url, "t-conc")
    key_a, key_b = _key("carol", a, concurrency=1), _key("carol", b, concurrency=1)
    a.acquire(key_a)
    with pytest.raises(RateLimited, match="concurrent"):
        b.acquire(key_b)
    a.release(key_a)
    b.acquire(key_b)
    b.release(key_b)
    b.release(key_b)  # an extra release never goes below zero
    a.acquire(key_a)


def test_tpm_reservations_hold_under_concurrency_across_replicas(redis_url: str):
    a, b = _replicas(redis_url, "t-tpm")
    keys = [_key("dave", a, tpm=1000), _key("dave", b, tpm=1000)]

    def reserve(i: int):
        key = keys[i % 2]
        try:
            return key._limiter.reserve(key, 300)
        except RateLimited:
            return None

    with ThreadPoolExecutor(6) as pool:
        held = [r for r in pool.map(reserve, range(6)) if r is not None]
    assert len(held) == 3  # 3 x 300 fit in 1000, a fourth does not, whichever replica asks
    held[0].settle(100)  # 200 given back
    held[0].settle(0)  # only the first settle counts
    assert keys[1]._limiter.reserve(keys[1], 250).tokens == 250
    with pytest.raises(RateLimited) as info:
        keys[0]._limiter.reserve(keys[0], 200)
    assert info.value.headers["retry-after"] and "left" in info.value.message
    with pytest.raises(RateLimited) as never:
        keys[0]._limiter.reserve(keys[0], 5000)
    assert never.value.headers["x-should-retry"] == "false"


def test_a_request_that_used_more_than_it_reserved_is_charged_the_excess(redis_url: str):
    a, _ = _replicas(redis_url, "t-excess")
    key = _key("erin", a, tpm=1000)
    held = a.reserve(key, 400)
    held.settle(700)
    with pytest.raises(RateLimited):
        a.reserve(key, 301)
    a.reserve(key, 300)


def test_window_state_expires_in_redis(redis_url: str):
    import redis

    a, _ = _replicas(redis_url, "t-ttl")
    a.acquire(_key("frank", a, rpm=5, tpm=100, concurrency=2))
    a.reserve(_key("frank", a, tpm=100), 10)
    client = redis.Redis.from_url(redis_url)
    for suffix in ("req", "tok", "inflight"):
        ttl = client.ttl(f"t-ttl:frank:{suffix}")
        assert 0 < ttl <= 3600, suffix


def test_an_unreachable_store_refuses_requests_with_a_503(tmp_path):
    """Fail closed: without the store nobody's limits can be checked, so nothing is let through."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gptoss.auth import AuthMiddleware, KeyStore
    from gptoss.auth.limits import LimitsUnavailable
    from gptoss.auth.shared_limits import RedisRateLimiter
    from gptoss.settings import Settings

    dead = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(LimitsUnavailable):
        dead.acquire(_key("gina", dead, rpm=5))
    with pytest.raises(LimitsUnavailable):
        dead.reserve(_key("gina", dead, tpm=50), 10)
    dead.release(_key("gina", dead, concurrency=1))  # logged, never raised

    key = "sk-test-dead-store-0123456789abcdef"
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: gina\n    key: {key}\n    limits: {{rpm: 5}}\n")
    keys.chmod(0o600)
    store = KeyStore(keys, limiter=dead)
    app = Starlette(routes=[Route("/v1/models", lambda request: PlainTextResponse("ok"))])
    client = TestClient(AuthMiddleware(app, store=store, settings=Settings(keys_file=keys)))
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable" and r.headers["retry-after"]

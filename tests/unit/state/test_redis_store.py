"""What only the Redis store does: TTLs, its size bookkeeping, reaching Redis, URLs.

Runs against a real ``redis-server`` started by conftest.py's ``redis_url``; skipped, saying so,
only where it is not installed. The shared behaviour is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gptoss.settings import Settings, redacted_url
from gptoss.state import ResponseStoreError, check_response_store, open_response_store
from gptoss.state.redis import RedisResponseStore
from tests.conftest import free_port
from tests.unit.state.conftest import NO_REDIS
from tests.unit.state.test_store_contract import record


@NO_REDIS
async def test_a_record_expires_in_redis_when_its_retention_ends(redis_url: str):
    import redis.asyncio

    store = RedisResponseStore(redis_url, retention_seconds=1000, prefix="t-ttl")
    await store.put(record("resp_1", age=400))
    client = redis.asyncio.Redis.from_url(redis_url)
    keys = await client.keys("t-ttl:r:*")
    assert len(keys) == 1 and 595_000 <= await client.pttl(keys[0]) <= 600_000
    await client.aclose()
    await store.close()


@NO_REDIS
async def test_records_past_retention_leave_the_size_accounting_at_the_next_write(redis_url: str):
    store = RedisResponseStore(redis_url, retention_seconds=1.5, prefix="t-acct")
    await store.put(record("resp_1", age=1.0))
    _, first = await store.usage()
    await asyncio.sleep(0.7)
    await store.put(record("resp_2"))
    assert await store.get("resp_1", "alice") is None
    count, used = await store.usage()
    assert count == 1 and 0.9 * first < used < 1.1 * first  # resp_2 alone (the same size, give or take a digit)
    await store.close()


@NO_REDIS
def test_the_settings_open_redis_at_the_state_url(redis_url: str, tmp_path):
    check_response_store(Settings(state_url=redis_url, state_dir=tmp_path / "unused"))
    store = open_response_store(Settings(state_url=redis_url, state_max_bytes=7, state_dir=tmp_path / "unused"))
    assert isinstance(store, RedisResponseStore) and store.max_bytes == 7
    assert not (tmp_path / "unused").exists()
    asyncio.run(store.close())


def test_an_unreachable_redis_stops_the_start_without_showing_the_password():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(ResponseStoreError, match="GPTOSS_STATE_URL: cannot reach") as info:
        open_response_store(Settings(state_url=url))
    assert "s3cret" not in str(info.value) and ":***@127.0.0.1" in str(info.value)


async def test_a_redis_that_goes_away_raises_the_store_error():
    store = RedisResponseStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ResponseStoreError, match="ConnectionError"):
        await store.get("resp_1", "alice")
    with pytest.raises(ResponseStoreError):
        await store.put(record("resp_1"))
    await store.close()


def test_the_state_url_must_be_a_redis_url():
    with pytest.raises(ValidationError, match="redis://"):
        Settings(state_url="http://127.0.0.1:6379")
    for url in ("", "redis://h:1/0", "rediss://:p@h:1/0", "unix:///run/redis.sock"):
        assert Settings(state_url=url).state_url == url
    assert redacted_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"

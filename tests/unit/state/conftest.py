"""The stores under test: each behavioural test runs on SQLite and on a real ``redis-server``.

``make_store(**options)`` opens a store on the test's own location (a directory, or a key prefix
in the shared Redis); calling it again opens a second store object on the same data, as a
restarted server or another replica would. The Redis cases skip, saying why, only where
``redis-server`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_redis

REDIS = shutil.which("redis-server")
NO_REDIS = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=NO_REDIS)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Any] = []
    prefix = f"test:{uuid.uuid4().hex}"

    def make(**options: Any) -> Any:
        if backend == "sqlite":
            from gptoss.state.sqlite import SQLiteResponseStore

            store = SQLiteResponseStore(tmp_path / "state", **options)
        else:
            from gptoss.state.redis import RedisResponseStore

            store = RedisResponseStore(request.getfixturevalue("redis_url"), prefix=prefix, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()

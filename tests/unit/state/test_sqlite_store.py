"""What only the SQLite store does: its file's settings, durability without close, purging, errors.

The behaviour it shares with Redis is tested on both in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gptoss.settings import Settings
from gptoss.state import ResponseStoreError, check_response_store, open_response_store
from gptoss.state.sqlite import DB_NAME, SQLiteResponseStore
from tests.conftest import REPO
from tests.unit.state.test_store_contract import record


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_file_is_wal_with_full_sync_and_calls_leave_the_event_loop(tmp_path: Path):
    store = SQLiteResponseStore(tmp_path)
    try:
        pragmas = await store._call(
            lambda: [store._conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")]
        )
        assert pragmas == ["wal", 2]  # 2: FULL
        worker = await store._call(threading.current_thread)
        assert worker is not threading.current_thread() and worker.name.startswith("gptoss-state")
        indexes = {row[1] for row in sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA index_list(responses)")}
        assert "responses_owner_id" in indexes
    finally:
        await store.close()


def test_a_put_is_on_disk_when_it_returns_even_if_the_process_dies_at_once(tmp_path: Path):
    rec = record("resp_1")
    script = (
        "import asyncio, os, sys\n"
        "from gptoss.state import StoredResponse\n"
        "from gptoss.state.sqlite import SQLiteResponseStore\n"
        f"store = SQLiteResponseStore({str(tmp_path)!r})\n"
        f"asyncio.run(store.put(StoredResponse(**{rec.__dict__!r})))\n"
        "os._exit(0)  # no close, no checkpoint: only what put made durable\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)

    async def read():
        store = SQLiteResponseStore(tmp_path)
        try:
            return await store.get("resp_1", "alice")
        finally:
            await store.close()

    assert asyncio.run(read()) == rec


async def test_expired_records_are_deleted_at_open_and_on_a_later_write(tmp_path: Path):
    clock = Clock(record("x").created_at)
    store = SQLiteResponseStore(tmp_path, retention_seconds=100, purge_interval=50, clock=clock)
    await store.put(record("resp_1"))
    clock.now += 101
    assert (await store.usage())[0] == 1  # invisible, not yet deleted
    assert await store.get("resp_1", "alice") is None
    await store.put(record("resp_2", age=-101))  # more than purge_interval since the last purge
    assert (await store.usage())[0] == 1
    await store.close()

    clock.now += 101
    reopened = SQLiteResponseStore(tmp_path, retention_seconds=100, clock=clock)
    assert await reopened.usage() == (0, 0)
    await reopened.close()


async def test_a_record_past_retention_is_not_written(tmp_path: Path):
    store = SQLiteResponseStore(tmp_path, retention_seconds=10)
    await store.put(record("resp_1", age=11))
    assert await store.usage() == (0, 0)
    await store.close()


async def test_a_closed_store_raises_the_store_error(tmp_path: Path):
    store = SQLiteResponseStore(tmp_path)
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(ResponseStoreError, match="closed"):
        await store.get("resp_1", "alice")


def test_a_new_directory_and_database_are_private(tmp_path: Path):
    SQLiteResponseStore(tmp_path / "state").close_sync()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / DB_NAME).stat().st_mode & 0o777 == 0o600


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ResponseStoreError, match="newer version"):
        SQLiteResponseStore(tmp_path)


def test_the_settings_open_sqlite_in_the_state_dir(tmp_path: Path):
    check_response_store(Settings(state_dir=tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b" / DB_NAME).is_file()
    store = open_response_store(Settings(state_dir=tmp_path / "a" / "b", state_retention_days=2, state_max_bytes=5))
    assert isinstance(store, SQLiteResponseStore) and store.retention_seconds == 2 * 86400 and store.max_bytes == 5
    store.close_sync()


def test_an_unusable_state_dir_stops_the_start_with_what_to_do(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ResponseStoreError, match=r"GPTOSS_STATE_DIR: cannot create or open .*writable"):
        open_response_store(Settings(state_dir=tmp_path / "file" / "state"))

"""Stored responses in an embedded SQLite database: one file under ``GPTOSS_STATE_DIR``.

- **Durable when put returns**: WAL journal with ``synchronous=FULL``, so every commit is on
  disk before ``put`` returns and a crash or restart loses nothing stored.
- **Off the event loop**: one worker thread owns the only connection (a sqlite3 connection must
  not be shared between threads, and SQLite writes one transaction at a time anyway); every call
  is queued to it. Other processes on the same host may open the same file (SQLite's locks,
  ``busy_timeout``); a network filesystem may not be used (its locks are not reliable).
- **Retention**: a record older than ``retention_seconds`` (from its ``created_at``) is never
  returned; expired rows are deleted at open and at most every ``purge_interval`` seconds on a
  write, and the file gives their pages back (``auto_vacuum=INCREMENTAL``).
- **Size cap**: the records' JSON bytes are summed by triggers (right for every process sharing
  the file); a write that takes the sum past ``max_bytes`` evicts the oldest records (by
  ``created_at``) until it fits again. The record just written is never evicted, even when it
  alone is larger than the cap. The file itself is somewhat larger than the sum (indexes, free
  pages reused by later writes, the WAL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gptoss.state import ResponseStoreError, StoredResponse

logger = logging.getLogger(__name__)

T = TypeVar("T")

DB_NAME = "responses.sqlite3"
SCHEMA_VERSION = 1

# One transaction (executescript commits any open one first, so BEGIN is part of the script).
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS responses (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    response TEXT NOT NULL,     -- JSON object
    input_items TEXT NOT NULL,  -- JSON array
    history TEXT NOT NULL       -- JSON array
);
CREATE UNIQUE INDEX IF NOT EXISTS responses_owner_id ON responses (owner, id);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
CREATE TABLE IF NOT EXISTS usage (one INTEGER PRIMARY KEY CHECK (one = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO usage (one, bytes) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON responses
    BEGIN UPDATE usage SET bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON responses
    BEGIN UPDATE usage SET bytes = bytes - OLD.size; END;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


class SQLiteResponseStore:
    """The :class:`~gptoss.state.ResponseStore` in ``<directory>/responses.sqlite3`` (module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        retention_seconds: float = 30 * 86400,
        max_bytes: int = 1 << 30,
        purge_interval: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating the directory and the schema); raises ResponseStoreError, at once."""
        self.path = Path(directory).expanduser() / DB_NAME
        self.retention_seconds = retention_seconds
        self.max_bytes = max_bytes
        self.purge_interval = purge_interval
        self._clock = clock
        self._last_purge = float("-inf")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-state")
        try:
            self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    # -- the worker thread -----------------------------------------------------------------------

    def _open(self) -> None:
        try:
            # Conversations are private: a new directory and file are the server user's alone
            # (SQLite gives the WAL and shared-memory files the database file's mode).
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise ResponseStoreError(f"cannot create or open {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ResponseStoreError(f"{self.path}: SQLite refused the WAL journal (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ResponseStoreError(
                    f"{self.path} was written by a newer version (schema {version}, this one reads {SCHEMA_VERSION})"
                )
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise ResponseStoreError(f"cannot write {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._purge_expired()
        count, size = self._usage()
        logger.info("Stored responses: %s (%d records, %d bytes)", self.path, count, size)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ResponseStoreError(f"{self.path}: the store is closed")
        return self._conn

    def _put(self, record: StoredResponse) -> None:
        conn = self._connection()
        now = self._clock()
        if record.created_at < now - self.retention_seconds:
            logger.warning("Stored response %s is older than the retention period: not stored", record.id)
            return
        texts = [json.dumps(v, ensure_ascii=False) for v in (record.response, record.input_items, record.history)]
        size = sum(len(t.encode()) for t in texts) + len(record.id.encode()) + len(record.owner.encode())
        with _transaction(conn):
            conn.execute("DELETE FROM responses WHERE owner = ? AND id = ?", (record.owner, record.id))
            cur = conn.execute(
                "INSERT INTO responses (owner, id, created_at, size, response, input_items, history) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.owner, record.id, record.created_at, size, *texts),
            )
            evicted = self._evict(conn, keep=cur.lastrowid)
        if evicted:
            logger.info("Stored responses over %d bytes: evicted the %d oldest", self.max_bytes, evicted)
        if now - self._last_purge >= self.purge_interval:
            self._purge_expired()

    def _evict(self, conn: sqlite3.Connection, keep: int | None) -> int:
        """Delete the oldest records (not ``keep``) until the total fits the cap; how many."""
        if self.max_bytes <= 0:
            return 0
        excess = conn.execute("SELECT bytes FROM usage").fetchone()[0] - self.max_bytes
        if excess <= 0:
            return 0
        victims: list[tuple[int]] = []
        for rowid, size in conn.execute("SELECT rowid, size FROM responses ORDER BY created_at, rowid"):
            if excess <= 0:
                break
            if rowid == keep:
                continue
            victims.append((rowid,))
            excess -= size
        conn.executemany("DELETE FROM responses WHERE rowid = ?", victims)
        return len(victims)

    def _purge_expired(self) -> int:
        conn = self._connection()
        now = self._clock()
        self._last_purge = now
        with _transaction(conn):
            deleted = conn.execute(
                "DELETE FROM responses WHERE created_at < ?", (now - self.retention_seconds,)
            ).rowcount
        if deleted:
            # The freed pages go back to the filesystem; each step of the pragma frees some: run it out.
            conn.execute("PRAGMA incremental_vacuum").fetchall()
            days = self.retention_seconds / 86400
            logger.info("Stored responses: deleted %d past the %g-day retention", deleted, days)
        return deleted

    def _get(self, response_id: str, owner: str) -> StoredResponse | None:
        row = (
            self._connection()
            .execute(
                "SELECT created_at, response, input_items, history FROM responses "
                "WHERE owner = ? AND id = ? AND created_at >= ?",
                (owner, response_id, self._clock() - self.retention_seconds),
            )
            .fetchone()
        )
        if row is None:
            return None
        created_at, response, input_items, history = row
        return StoredResponse(
            id=response_id,
            owner=owner,
            created_at=created_at,
            response=json.loads(response),
            input_items=json.loads(input_items),
            history=json.loads(history),
        )

    def _delete(self, response_id: str, owner: str) -> bool:
        conn = self._connection()
        with _transaction(conn):
            row = conn.execute(
                "SELECT created_at FROM responses WHERE owner = ? AND id = ?", (owner, response_id)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM responses WHERE owner = ? AND id = ?", (owner, response_id))
        return row[0] >= self._clock() - self.retention_seconds  # an expired one was already gone

    def _usage(self) -> tuple[int, int]:
        conn = self._connection()
        count = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
        return count, conn.execute("SELECT bytes FROM usage").fetchone()[0]

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the event loop's side ----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the worker thread; sqlite3 errors become ResponseStoreError."""
        if self._closed:
            raise ResponseStoreError(f"{self.path}: the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise ResponseStoreError(f"{self.path}: {exc}") from exc

    async def put(self, record: StoredResponse) -> None:
        await self._call(self._put, record)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        return await self._call(self._get, response_id, owner)

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self._call(self._delete, response_id, owner)

    async def usage(self) -> tuple[int, int]:
        """(records, their JSON bytes), expired ones not yet purged included."""
        return await self._call(self._usage)

    async def purge_expired(self) -> int:
        """Delete the records past retention now; how many."""
        return await self._call(self._purge_expired)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def close_sync(self) -> None:
        """Close without an event loop (the start-up check)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._close).result()
        finally:
            self._executor.shutdown(wait=True)


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken up front,
    so two processes never deadlock upgrading read locks."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

"""Server state that outlives a request: stored Responses API responses.

The Responses API keeps what a client stores (``store: true``) so that it can be read back
(``GET /v1/responses/{id}``, ``/input_items``), deleted, and continued with
``previous_response_id``. One :class:`ResponseStore` owns it; :func:`open_response_store` picks
the backend from the settings: an embedded SQLite file under ``GPTOSS_STATE_DIR`` (default), or
Redis when ``GPTOSS_STATE_URL=redis://...`` (shared by every replica).

Every record belongs to one owner (the API key's name; ``""`` when keys are off). Reads and
deletes take the owner and treat another owner's record as absent, so a key never learns that
someone else's id exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gptoss.settings import Settings, redacted_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResponse:
    """One stored response, all JSON-serialisable.

    ``response`` is the Response object exactly as the API returned it. ``input_items`` are the
    items of this request's input, with their ids (what ``/input_items`` lists). ``history`` is
    the whole conversation up to and including this response's output items, as Responses API
    input items: what a request with ``previous_response_id`` continues from.
    """

    id: str
    owner: str
    created_at: float  # unix seconds
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


class ResponseStoreError(RuntimeError):
    """The store cannot be opened, read or written; the message says why (never a password).

    Raised by every backend instead of its own exception types, so the API maps one type (a 503:
    the request may succeed later) and never needs to know whether SQLite or Redis is behind it.
    """


class ResponseStore(Protocol):
    """Where stored responses live. Writes are durable when ``put`` returns."""

    async def put(self, record: StoredResponse) -> None:
        """Store (or replace) the record. Raises ResponseStoreError when it cannot be written."""

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The record, or None when it does not exist, has expired or belongs to another owner."""

    async def delete(self, response_id: str, owner: str) -> bool:
        """Whether a record of this owner was deleted."""

    async def close(self) -> None: ...


def open_response_store(settings: Settings) -> ResponseStore:
    """The store the settings name: Redis at ``GPTOSS_STATE_URL``, else SQLite in ``GPTOSS_STATE_DIR``.

    Synchronous, for start-up: raises ResponseStoreError, with the setting to fix, when the
    directory cannot be written or Redis cannot be reached.
    """
    retention = settings.state_retention_days * 86400
    if settings.state_url:
        from gptoss.state.redis import RedisResponseStore

        store = RedisResponseStore(settings.state_url, retention_seconds=retention, max_bytes=settings.state_max_bytes)
        try:
            store.check()
        except ResponseStoreError as exc:
            raise ResponseStoreError(f"GPTOSS_STATE_URL: {exc}. Check the URL and that Redis is running.") from exc
        logger.info("Stored responses are kept in %s", redacted_url(settings.state_url))
        return store
    from gptoss.state.sqlite import SQLiteResponseStore

    try:
        return SQLiteResponseStore(settings.state_dir, retention_seconds=retention, max_bytes=settings.state_max_bytes)
    except ResponseStoreError as exc:
        raise ResponseStoreError(
            f"GPTOSS_STATE_DIR: {exc}. Make the directory writable by the server's user (uid 1034 in the "
            "container), point GPTOSS_STATE_DIR elsewhere, or set GPTOSS_STATE_URL=redis://..."
        ) from exc


def check_response_store(settings: Settings) -> None:
    """The start-up check of :func:`open_response_store`, without keeping the store open."""
    store = open_response_store(settings)
    # SQLite holds a file and a thread; Redis's async client opens no connection before its first call.
    close_sync = getattr(store, "close_sync", None)
    if close_sync is not None:
        close_sync()

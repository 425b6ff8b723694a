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

from dataclasses import dataclass
from typing import Any, Protocol


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

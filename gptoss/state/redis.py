"""Stored responses in Redis (``GPTOSS_STATE_URL=redis://…``): one store for every replica.

Per record, one string key ``<prefix>:r:<len(owner)>:<owner>:<id>`` holding the record's JSON,
with a TTL that ends its retention (counted from its ``created_at`` by Redis's clock). The owner
is part of the key, so another key's id is simply absent.

The size cap is ours, not Redis's ``maxmemory``: ``<prefix>:index`` (a sorted set of record keys
by ``created_at``), ``<prefix>:sizes`` (a hash of their JSON bytes) and ``<prefix>:bytes`` (their
sum) are kept by Lua scripts, atomic in Redis. A write that takes the sum past ``max_bytes``
evicts the oldest records until it fits (never the one just written); records past retention
leave the accounting at the next write. These three keys have no TTL, so a ``volatile-*``
maxmemory policy never evicts them; with ``allkeys-*`` Redis may drop records (or the
bookkeeping) on its own: use ``noeviction`` or a ``volatile-*`` policy.

Durability is Redis's: ``put`` returns when Redis has the write; whether that survives a Redis
restart is its persistence configuration (``appendonly yes`` with ``appendfsync always`` for
nothing lost, ``everysec`` for up to a second), the operator's job. The scripts touch keys found
in the index, so this needs a standalone Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gptoss.settings import redacted_url
from gptoss.state import ResponseStoreError, StoredResponse

logger = logging.getLogger(__name__)

# KEYS: index, sizes, bytes. Drops the bookkeeping of records past retention (their keys have
# expired), at most ``limit`` per call, and of ``key`` itself when given (replace, delete).
_FORGET = """
local function forget(key)
  local old = redis.call('HGET', KEYS[2], key)
  if old then
    redis.call('HDEL', KEYS[2], key)
    redis.call('DECRBY', KEYS[3], tonumber(old))
  end
  redis.call('ZREM', KEYS[1], key)
  redis.call('DEL', key)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function forget_expired(retention)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - retention), 'LIMIT', 0, 256)
  for _, key in ipairs(expired) do forget(key) end
end
"""

# KEYS: index, sizes, bytes, record. ARGV: JSON, created_at, retention s, max bytes (0: none), size.
# Returns {stored (0/1), evicted}.
_PUT = (
    _FORGET
    + """
local created, retention, cap, size = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
forget_expired(retention)
local ttl_ms = math.floor((created + retention - now) * 1000)
if ttl_ms <= 0 then return {0, 0} end
forget(KEYS[4])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ttl_ms)
redis.call('ZADD', KEYS[1], created, KEYS[4])
redis.call('HSET', KEYS[2], KEYS[4], size)
local total = redis.call('INCRBY', KEYS[3], size)
local evicted = 0
while cap > 0 and total > cap do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 1)
  local victim = oldest[1]
  if victim == KEYS[4] then victim = oldest[2] end
  if not victim then break end
  forget(victim)
  evicted = evicted + 1
  total = tonumber(redis.call('GET', KEYS[3]) or '0')
end
return {1, evicted}
"""
)

# KEYS: index, sizes, bytes, record. ARGV: retention s. Returns whether the record existed.
_DELETE = (
    _FORGET
    + """
local existed = redis.call('EXISTS', KEYS[4])
forget(KEYS[4])
forget_expired(tonumber(ARGV[1]))
return existed
"""
)


class RedisResponseStore:
    """The :class:`~gptoss.state.ResponseStore` in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        retention_seconds: float = 30 * 86400,
        max_bytes: int = 1 << 30,
        prefix: str = "gptoss:responses",
        client: Any = None,
    ) -> None:
        import redis
        import redis.asyncio

        self.url = url
        self.retention_seconds = retention_seconds
        self.max_bytes = max_bytes
        self._prefix = prefix
        self._redis = client or redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._put_script = self._redis.register_script(_PUT)
        self._delete_script = self._redis.register_script(_DELETE)
        self._errors = (redis.RedisError, OSError)
        self._meta = [f"{prefix}:index", f"{prefix}:sizes", f"{prefix}:bytes"]

    def check(self) -> None:
        """Raise ResponseStoreError if Redis cannot be reached (at start, with a blocking client)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        except self._errors as exc:
            raise ResponseStoreError(f"cannot reach {redacted_url(self.url)}: {type(exc).__name__}: {exc}") from exc
        finally:
            client.close()

    def _key(self, response_id: str, owner: str) -> str:
        return f"{self._prefix}:r:{len(owner)}:{owner}:{response_id}"

    async def put(self, record: StoredResponse) -> None:
        value = json.dumps(
            {
                "created_at": record.created_at,
                "response": record.response,
                "input_items": record.input_items,
                "history": record.history,
            },
            ensure_ascii=False,
        ).encode()
        key = self._key(record.id, record.owner)
        args = [value, repr(float(record.created_at)), _seconds(self.retention_seconds), self.max_bytes, len(value)]
        stored, evicted = await self._run(self._put_script(keys=[*self._meta, key], args=args))
        if not int(stored):
            logger.warning("Stored response %s is older than the retention period: not stored", record.id)
        if int(evicted):
            logger.info("Stored responses over %d bytes: evicted the %d oldest", self.max_bytes, int(evicted))

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        value = await self._run(self._redis.get(self._key(response_id, owner)))
        if value is None:
            return None
        data = json.loads(value)
        return StoredResponse(
            id=response_id,
            owner=owner,
            created_at=data["created_at"],
            response=data["response"],
            input_items=data["input_items"],
            history=data["history"],
        )

    async def delete(self, response_id: str, owner: str) -> bool:
        key = self._key(response_id, owner)
        existed = await self._run(self._delete_script(keys=[*self._meta, key], args=[_seconds(self.retention_seconds)]))
        return bool(int(existed))

    async def usage(self) -> tuple[int, int]:
        """(records, their JSON bytes), expired ones not yet dropped from the accounting included."""
        count = await self._run(self._redis.zcard(self._meta[0]))
        size = await self._run(self._redis.get(self._meta[2]))
        return int(count), int(size or 0)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self, call: Any) -> Any:
        """Await a Redis call; its failures become ResponseStoreError."""
        try:
            return await call
        except self._errors as exc:
            raise ResponseStoreError(f"{redacted_url(self.url)}: {type(exc).__name__}: {exc}") from exc


def _seconds(value: float) -> str:
    return repr(float(value))

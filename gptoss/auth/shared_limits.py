"""Per-key limits shared by every replica: the RateLimiter's rules, kept in Redis.

With ``GPTOSS_LIMITS_STORE=redis://host:port/db`` every replica admits, reserves and settles
against the same counters, so a key's rpm, tpm and concurrency hold for the whole service, not
per replica. Each decision is one Lua script, atomic in Redis, timed by Redis's own clock (the
replicas' clocks may differ). Per key name:

- ``…:req``: sorted set of admission times (rpm), pruned to the last 60 s;
- ``…:tok``: sorted set of ``<id>:<tokens>`` reservations scored by time (tpm), pruned likewise;
- ``…:inflight``: a counter (concurrency) that expires on its own if a replica dies holding it.

The in-memory :class:`~gptoss.auth.limits.RateLimiter` stays the default.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from gptoss.auth.limits import (
    WINDOW_SECONDS,
    LimitsUnavailable,
    RateLimited,
    Reservation,
    _duration,
    never_fits,
    tokens_full,
)
from gptoss.auth.principal import Limits, Principal

logger = logging.getLogger(__name__)

# Shared by the scripts: prune the window, then read the rpm count and the tpm sum and entries.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local sum = 0
for i = 1, #entries, 2 do sum = sum + tonumber(string.match(entries[i], ':(%d+)$')) end
local nreq = redis.call('ZCARD', KEYS[1])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
local function tokens_wait(tpm, need)
  local left = sum
  for i = 1, #entries, 2 do
    left = left - tonumber(string.match(entries[i], ':(%d+)$'))
    if left + need <= tpm then return tonumber(entries[i + 1]) + window - now end
  end
  return window
end
local function state()
  local req_reset = first and (tonumber(first) + window - now) or 0
  local tok_reset = #entries > 0 and (tonumber(entries[2]) + window - now) or 0
  return {nreq, sum, tostring(req_reset), tostring(tok_reset)}
end
"""

# KEYS: req, tok, inflight. ARGV: window, rpm, tpm, concurrency (-1 = none), member, inflight ttl.
_ACQUIRE = _WINDOW + """
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local inflight = tonumber(redis.call('GET', KEYS[3]) or '0')
local verdict, wait = 'ok', 0
if conc >= 0 and inflight >= conc then verdict, wait = 'concurrency', 1
elseif rpm >= 0 and nreq >= rpm then verdict, wait = 'rpm', tonumber(first) + window - now
elseif tpm >= 0 and sum >= tpm then verdict, wait = 'tpm', tokens_wait(tpm, 1)
else
  if rpm >= 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[5])
    redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
    nreq = nreq + 1
    if not first then first = tostring(now) end
  end
  if conc >= 0 then
    redis.call('INCR', KEYS[3])
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
  end
end
local s = state()
return {verdict, tostring(wait), s[1], s[2], s[3], s[4]}
"""

# KEYS: inflight.
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return n
"""

# KEYS: req, tok. ARGV: window, tpm, tokens, member.
_RESERVE = _WINDOW + """
local tpm, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local verdict, wait = 'ok', 0
if n > tpm then verdict = 'never'
elseif sum + n > tpm then verdict, wait = 'full', tokens_wait(tpm, n)
else
  redis.call('ZADD', KEYS[2], now, ARGV[4] .. ':' .. n)
  redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
  sum = sum + n
  if #entries == 0 then entries = {ARGV[4], tostring(now)} end
end
local s = state()
return {verdict, tostring(wait), s[1], s[2], s[3], s[4]}
"""

# KEYS: req, tok. ARGV: window, member, reserved, used. A reservation still in the window takes
# the used count in its place (a refund, or more); one already out of it adds only any excess.
_SETTLE = _WINDOW + """
local member, reserved, used = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local score = redis.call('ZSCORE', KEYS[2], member .. ':' .. reserved)
if score then
  redis.call('ZREM', KEYS[2], member .. ':' .. reserved)
  if used > 0 then redis.call('ZADD', KEYS[2], score, member .. ':' .. used) end
elseif used > reserved then
  redis.call('ZADD', KEYS[2], now, member .. ':' .. (used - reserved))
  redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
end
return 1
"""


class RedisRateLimiter:
    """The :class:`~gptoss.auth.limits.RateLimiter` interface over Redis (see the module docstring)."""

    def __init__(
        self, url: str, *, prefix: str = "gptoss:limits", inflight_ttl: int = 3600, client: Any = None
    ) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = prefix
        self._inflight_ttl = inflight_ttl
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle_script = self._redis.register_script(_SETTLE)
        self._errors = (redis.RedisError, OSError)
        self.clock: Callable[[], float] | None = None  # Redis keeps the time

    def ping(self) -> None:
        """Raise if the store cannot be reached (at start: fail loudly, not on the first request)."""
        self._redis.ping()

    def _keys(self, name: str) -> list[str]:
        base = f"{self._prefix}:{name}"
        return [f"{base}:req", f"{base}:tok", f"{base}:inflight"]

    @staticmethod
    def _headers(limits: Limits, reply: list[Any]) -> dict[str, str]:
        nreq, token_sum = int(reply[2]), int(reply[3])
        h: dict[str, str] = {}
        if limits.rpm is not None:
            h["x-ratelimit-limit-requests"] = str(limits.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - nreq))
            h["x-ratelimit-reset-requests"] = _duration(float(reply[4]))
        if limits.tpm is not None:
            h["x-ratelimit-limit-tokens"] = str(limits.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - token_sum))
            h["x-ratelimit-reset-tokens"] = _duration(float(reply[5]))
        return h

    def acquire(self, principal: Principal, now: float | None = None) -> dict[str, str]:
        limits = principal.limits
        if not limits.any:
            return {}
        args = [WINDOW_SECONDS, _or_none(limits.rpm), _or_none(limits.tpm), _or_none(limits.concurrency)]
        reply = self._call(self._acquire, self._keys(principal.name), [*args, uuid.uuid4().hex, self._inflight_ttl])
        verdict = _text(reply[0])
        headers = self._headers(limits, reply)
        if verdict == "ok":
            return headers
        message = {
            "concurrency": f"Too many concurrent requests for this API key (limit {limits.concurrency}).",
            "rpm": f"Rate limit reached: {limits.rpm} requests per minute for this API key.",
            "tpm": f"Rate limit reached: {limits.tpm} tokens per minute for this API key.",
        }[verdict]
        retry = max(1, math.ceil(float(reply[1])))
        headers["retry-after"] = str(retry)
        raise RateLimited(f"{message} Please retry after {retry} s.", headers)

    def release(self, principal: Principal) -> None:
        if principal.limits.concurrency is not None:
            try:
                self._release(keys=[self._keys(principal.name)[2]])
            except self._errors as exc:  # the counter expires on its own (inflight_ttl)
                logger.error("Could not release a concurrency slot of key '%s': %s", principal.name, exc)

    def reserve(self, principal: Principal, n: int, now: float | None = None) -> Reservation:
        tpm = principal.limits.tpm
        if tpm is None or n <= 0:
            return Reservation(None, 0, principal.name)
        member = uuid.uuid4().hex
        reply = self._call(self._reserve, self._keys(principal.name)[:2], [WINDOW_SECONDS, tpm, n, member])
        verdict = _text(reply[0])
        headers = self._headers(principal.limits, reply)
        if verdict == "never":
            raise never_fits(tpm, n, headers)
        if verdict == "full":
            raise tokens_full(tpm, n, int(reply[3]), float(reply[1]), headers)
        return Reservation(self, n, principal.name, member=member)

    def _settle(self, res: Reservation, used: int, now: float | None = None) -> None:
        if res._settled or res.name is None:
            res._settled = True
            return
        res._settled = True
        keys = self._keys(res.name)[:2]
        try:
            self._settle_script(keys=keys, args=[WINDOW_SECONDS, res.member, res.tokens, max(0, int(used))])
        except self._errors as exc:  # the reservation leaves the window on its own within 60 s
            logger.error("Could not settle a token reservation of key '%s': %s", res.name, exc)

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        """Run a decision script; a store that cannot answer refuses the request (LimitsUnavailable)."""
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise LimitsUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def retain(self, names: Iterable[str]) -> None:
        """Nothing to forget here: every counter expires on its own in Redis."""


def _or_none(value: int | None) -> int:
    return -1 if value is None else int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

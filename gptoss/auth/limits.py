"""Per-key limits: the RateLimiter (rpm, tpm, concurrency) and the tpm Reservation a request holds.

The middleware admits a request (rpm, concurrency); the route reserves its tokens once it
knows the request's size (:func:`reserve_tokens`), so concurrent requests cannot overshoot tpm.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gptoss.auth.principal import Limits, Principal, get_principal
from gptoss.errors import APIError

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0


def reserve_tokens(principal: Any, n: int) -> Reservation:
    """Hold ``n`` tokens of the key's tpm window for one request, at admission; settle at the end.

    ``n`` is the most the request can use: ``prompt_tokens + max_tokens * n_choices``. Raises
    ``APIError(429, code="rate_limit_exceeded")`` with ``Retry-After`` and ``x-ratelimit-*`` headers
    when the last 60 s plus ``n`` would exceed the key's tpm, so concurrent requests cannot
    overshoot it. A request with ``n`` above the whole tpm limit can never fit: it gets a 429 that
    says so, with ``x-should-retry: false`` and no ``Retry-After`` (the openai SDKs then do not retry).
    Accepts a Principal, a scope or ``request.state``; for ``None`` (auth disabled), a key without
    a tpm limit or ``n <= 0`` it returns a Reservation whose ``settle`` does nothing.
    Then call ``reservation.settle(used_tokens)`` once the request ends (in a ``finally``).
    """
    p = get_principal(principal)
    if p is None or p._limiter is None:
        return Reservation(None, 0)
    try:
        return p._limiter.reserve(p, int(n))
    except RateLimited as e:
        logger.info("429 for key '%s': %s", p.name, e.message)
        raise APIError(429, e.message, code="rate_limit_exceeded", headers=e.headers) from None
    except LimitsUnavailable as e:
        raise limits_unavailable(e) from None


def limits_unavailable(exc: LimitsUnavailable) -> APIError:
    """The 503 a request gets while the shared limits store is down (fail closed)."""
    logger.error("Per-key limits store unavailable: %s", exc)
    return APIError(
        503,
        "Rate limits cannot be checked right now; retry shortly.",
        code="limits_unavailable",
        headers={"Retry-After": "2"},
    )


class LimitsUnavailable(Exception):
    """The shared limits store cannot be reached: the request is refused (503), never let through."""


class RateLimited(Exception):
    """Internal: a request is over a limit; carries the 429's message and headers."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class _KeyState:
    __slots__ = ("requests", "tokens", "token_sum", "in_flight")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()  # admission times, at most rpm of them
        self.tokens: deque[list[float]] = deque()  # [time, tokens], coalesced per second
        self.token_sum = 0
        self.in_flight = 0


class Reservation:
    """Tokens one request holds in its key's tpm window, from admission until :meth:`settle`.

    Holds no key material (only the key's name), so it is safe to log or repr.
    """

    __slots__ = ("name", "tokens", "member", "_limiter", "_state", "_bucket", "_settled")

    def __init__(
        self,
        limiter: Any,
        tokens: int,
        name: str | None = None,
        state: _KeyState | None = None,
        bucket: list[float] | None = None,
        member: str | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens  # reserved at admission
        self.member = member  # its entry in a shared store (shared_limits)
        self._limiter = limiter  # RateLimiter or shared_limits.RedisRateLimiter
        self._state = state
        self._bucket = bucket
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def settle(self, used_tokens: int) -> None:
        """The request used ``used_tokens``: refund the unused part (or charge any excess).

        Idempotent: only the first call counts. Call it exactly once per request, in a finally.
        """
        if self._limiter is None:
            self._settled = True
            return
        self._limiter._settle(self, int(used_tokens))

    def __repr__(self) -> str:
        return f"Reservation(name={self.name!r}, tokens={self.tokens}, settled={self._settled})"


def never_fits(tpm: int, n: int, headers: dict[str, str]) -> RateLimited:
    """A reservation larger than the key's whole tpm: a 429 the client should not retry."""
    headers["x-should-retry"] = "false"
    return RateLimited(
        f"Request too large for this API key's limit of {tpm} tokens per minute: it may use up "
        f"to {n} tokens (prompt + max_tokens x n), so it can never fit. Reduce max_tokens, n or "
        "the prompt.",
        headers,
    )


def tokens_full(tpm: int, n: int, used: int, wait: float, headers: dict[str, str]) -> RateLimited:
    """A reservation the key's tpm window cannot hold now: a 429 with when to retry."""
    retry = max(1, math.ceil(wait))
    headers["retry-after"] = str(retry)
    return RateLimited(
        f"Rate limit reached: {tpm} tokens per minute for this API key (this request may use up "
        f"to {n} tokens, {max(0, tpm - used)} are left). Please retry after {retry} s.",
        headers,
    )


def _duration(seconds: float) -> str:
    """OpenAI-style reset duration, e.g. ``12s`` or ``1m0s``."""
    s = max(0, math.ceil(seconds))
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class RateLimiter:
    """Sliding-window rpm / tpm and in-flight counts per key name.

    State is keyed by the key's *name* so that it survives a keys-file reload; memory is bounded
    (at most rpm timestamps and ~60 token buckets per key, state only for keys with limits).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _KeyState] = {}

    def _prune(self, st: _KeyState, now: float) -> None:
        edge = now - WINDOW_SECONDS
        while st.requests and st.requests[0] <= edge:
            st.requests.popleft()
        while st.tokens and st.tokens[0][0] <= edge:
            st.token_sum -= int(st.tokens.popleft()[1])

    def _headers(self, limits: Limits, st: _KeyState, now: float) -> dict[str, str]:
        h: dict[str, str] = {}
        if limits.rpm is not None:
            reset = st.requests[0] + WINDOW_SECONDS - now if st.requests else 0.0
            h["x-ratelimit-limit-requests"] = str(limits.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - len(st.requests)))
            h["x-ratelimit-reset-requests"] = _duration(reset)
        if limits.tpm is not None:
            reset = st.tokens[0][0] + WINDOW_SECONDS - now if st.tokens else 0.0
            h["x-ratelimit-limit-tokens"] = str(limits.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - st.token_sum))
            h["x-ratelimit-reset-tokens"] = _duration(reset)
        return h

    def _tokens_retry(self, st: _KeyState, tpm: int, now: float, need: int = 1) -> float:
        """Seconds until the window has room for ``need`` more tokens under ``tpm``."""
        remaining = st.token_sum
        for ts, n in st.tokens:
            remaining -= int(n)
            if remaining + need <= tpm:
                return ts + WINDOW_SECONDS - now
        return WINDOW_SECONDS

    @staticmethod
    def _add_tokens(st: _KeyState, n: int, now: float) -> list[float]:
        """Add ``n`` tokens at ``now`` (coalesced per second: bounded memory); returns the bucket."""
        if st.tokens and int(st.tokens[-1][0]) == int(now):
            st.tokens[-1][1] += n
        else:
            st.tokens.append([now, n])
        st.token_sum += n
        return st.tokens[-1]

    def acquire(self, principal: Principal, now: float | None = None) -> dict[str, str]:
        """Admit one request or raise RateLimited. Returns the x-ratelimit-* headers to send."""
        limits = principal.limits
        if not limits.any:
            return {}
        now = self.clock() if now is None else now
        with self._lock:
            st = self._states.setdefault(principal.name, _KeyState())
            self._prune(st, now)
            problem: tuple[str, float] | None = None
            if limits.concurrency is not None and st.in_flight >= limits.concurrency:
                problem = (f"Too many concurrent requests for this API key (limit {limits.concurrency}).", 1.0)
            elif limits.rpm is not None and len(st.requests) >= limits.rpm:
                wait = st.requests[0] + WINDOW_SECONDS - now
                problem = (f"Rate limit reached: {limits.rpm} requests per minute for this API key.", wait)
            elif limits.tpm is not None and st.token_sum >= limits.tpm:
                wait = self._tokens_retry(st, limits.tpm, now, need=1)
                problem = (f"Rate limit reached: {limits.tpm} tokens per minute for this API key.", wait)
            if problem is not None:
                message, wait = problem
                retry = max(1, math.ceil(wait))
                headers = self._headers(limits, st, now)
                headers["retry-after"] = str(retry)
                raise RateLimited(f"{message} Please retry after {retry} s.", headers)
            if limits.rpm is not None:
                st.requests.append(now)
            st.in_flight += 1
            return self._headers(limits, st, now)

    def release(self, principal: Principal) -> None:
        """End of a request admitted by :meth:`acquire` (call exactly once, in a finally)."""
        if not principal.limits.any:
            return
        with self._lock:
            st = self._states.get(principal.name)
            if st is not None and st.in_flight > 0:
                st.in_flight -= 1

    def reserve(self, principal: Principal, n: int, now: float | None = None) -> Reservation:
        """Put ``n`` tokens into the key's tpm window now, or raise RateLimited if they do not fit.

        Checking and adding under one lock is what keeps concurrent requests within tpm. See
        :func:`reserve_tokens` for the rules; this is its lock-holding half.
        """
        tpm = principal.limits.tpm
        if tpm is None or n <= 0:
            return Reservation(None, 0, principal.name)
        now = self.clock() if now is None else now
        with self._lock:
            st = self._states.setdefault(principal.name, _KeyState())
            self._prune(st, now)
            if n > tpm:
                raise never_fits(tpm, n, self._headers(principal.limits, st, now))
            if st.token_sum + n > tpm:
                wait = self._tokens_retry(st, tpm, now, need=n)
                raise tokens_full(tpm, n, st.token_sum, wait, self._headers(principal.limits, st, now))
            bucket = self._add_tokens(st, n, now)
            return Reservation(self, n, principal.name, st, bucket)

    def _settle(self, res: Reservation, used: int, now: float | None = None) -> None:
        """Reservation.settle: give back ``tokens - used`` if still in the window; charge any excess."""
        used = max(0, used)
        now = self.clock() if now is None else now
        with self._lock:
            if res._settled:
                return
            res._settled = True
            st = res._state
            if st is None or res.name is None or self._states.get(res.name) is not st:
                return  # the key was removed by a reload; its state is gone
            self._prune(st, now)
            if used > res.tokens:
                self._add_tokens(st, used - res.tokens, now)
                return
            refund = res.tokens - used
            bucket = res._bucket
            # Only while the bucket is still in the window: once out, its tokens no longer count.
            if refund and bucket is not None and any(b is bucket for b in st.tokens):
                bucket[1] -= refund
                st.token_sum -= refund

    def retain(self, names: Iterable[str]) -> None:
        """Forget state of keys that no longer exist (unless requests of theirs are in flight)."""
        keep = set(names)
        with self._lock:
            for name in [n for n, st in self._states.items() if n not in keep and st.in_flight == 0]:
                del self._states[name]

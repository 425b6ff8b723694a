"""API keys: who may call this server, which routes and models they may use, and how often.

A pure ASGI middleware (:class:`AuthMiddleware`) checks ``Authorization: Bearer <key>`` on every
request except a short, exact allowlist (health probes, CORS preflight, and optionally docs and
metrics). Keys come from a YAML/JSON keys file (``GPTOSS_KEYS_FILE``) and/or ``GPTOSS_API_KEYS``;
the file is re-read on change without a restart. Each key may carry permissions, a model list and
rpm / tpm / concurrency limits. Key material never appears in logs, errors or reprs: only the
key's *name* does.

Run ``python auth.py --help`` for the small CLI (create keys, hash keys, check a keys file).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from gptoss.errors import APIError, send_error
from gptoss.routes import find_route
from gptoss.settings import Settings, get_settings

logger = logging.getLogger(__name__)

__all__ = [
    "PERMISSIONS",
    "AuthMiddleware",
    "KeyStore",
    "KeysFileError",
    "Limits",
    "NoKeysConfigured",
    "Principal",
    "RateLimiter",
    "Reservation",
    "check_model_access",
    "get_key_store",
    "get_principal",
    "hash_key",
    "install_sighup_handler",
    "log_auth_mode",
    "main",
    "required_permissions",
    "reserve_tokens",
    "reset_key_store",
    "validate_auth_config",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: Every permission a key may hold. ``all`` grants everything.
PERMISSIONS: frozenset[str] = frozenset({"all", "chat", "completions", "models", "generate"})
#: Permissions that also let a key list models (clients such as ProTalk list models first).
_MODEL_LISTERS = frozenset({"models", "chat", "completions"})

MIN_KEY_LENGTH = 16
MAX_AUTH_HEADER_BYTES = 8192
WINDOW_SECONDS = 60.0


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$")
_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_ENTRY_FIELDS = frozenset({"name", "user", "key", "permissions", "models", "limits", "description"})
_SEED_FIELDS = frozenset({"name", "user", "permissions", "models", "limits", "description"})
_LIMIT_FIELDS = ("rpm", "tpm", "concurrency")

_HOW_TO_ADD_KEYS = (
    "No API keys are configured, and authentication is on (secure by default). Either:\n"
    '  1. create a keys file:  echo "keys:" > keys.yaml && chmod 600 keys.yaml && '
    "python auth.py new-key --name NAME >> keys.yaml\n"
    "     (the file gets the key's sha256; the key itself is printed on the terminal, once)\n"
    "     then start the server with  GPTOSS_KEYS_FILE=keys.yaml\n"
    "  2. or pass keys directly:  GPTOSS_API_KEYS=sk-your-long-random-key[,sk-another-key]\n"
    "  3. or (local testing only, never on a network) turn auth off:  GPTOSS_AUTH_DISABLED=true"
)


# --------------------------------------------------------------------------------------------
# Errors and data types
# --------------------------------------------------------------------------------------------


class NoKeysConfigured(RuntimeError):
    """Auth is on but there is no key: refuse to start rather than serve nobody (or everybody)."""

    def __init__(self, message: str = _HOW_TO_ADD_KEYS) -> None:
        super().__init__(message)


class KeysFileError(ValueError):
    """The keys file (or ``GPTOSS_API_KEYS``) is invalid. Messages never contain key material."""


@dataclass(frozen=True)
class Limits:
    """Per-key limits; ``None`` = unlimited."""

    rpm: int | None = None  # requests per rolling 60 s
    tpm: int | None = None  # tokens per rolling 60 s (reserved at admission: reserve_tokens)
    concurrency: int | None = None  # requests in flight at once

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.concurrency is not None


@dataclass(frozen=True)
class Principal:
    """The caller a valid key identifies. Holds no key material, so it is safe to log or repr."""

    name: str
    permissions: frozenset[str] = frozenset({"all"})
    models: frozenset[str] | None = None  # None = every model
    limits: Limits = Limits()
    # The limiter of the store that issued this principal, so reserve_tokens needs no globals.
    _limiter: RateLimiter | None = field(default=None, repr=False, compare=False, hash=False)

    def has_permission(self, permission: str) -> bool:
        """Whether this key may use routes that need ``permission``."""
        if "all" in self.permissions or permission in self.permissions:
            return True
        return permission == "models" and bool(self.permissions & _MODEL_LISTERS)

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a key: what a keys file may store instead of the key itself."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_principal(obj: Any) -> Principal | None:
    """The Principal from a Principal, an ASGI scope, a ``scope["state"]`` dict or ``request.state``."""
    if obj is None or isinstance(obj, Principal):
        return obj
    if isinstance(obj, Mapping):
        if isinstance(obj.get("principal"), Principal):
            return obj["principal"]
        state = obj.get("state")
        if isinstance(state, Mapping) and isinstance(state.get("principal"), Principal):
            return state["principal"]
        return None
    found = getattr(obj, "principal", None)  # starlette State / request.state
    if isinstance(found, Principal):
        return found
    state = getattr(obj, "state", None)  # a starlette Request
    found = getattr(state, "principal", None) if state is not None else None
    return found if isinstance(found, Principal) else None


def check_model_access(principal: Principal | None, model: str) -> None:
    """Raise a 403 APIError if this key may not use ``model``. ``None`` (auth disabled) = allowed."""
    if principal is None or principal.allows_model(model):
        return
    shown = model if len(model) <= 100 else model[:100] + "..."
    raise APIError(
        403,
        f"This API key is not allowed to use the model '{shown}'.",
        param="model",
        code="model_not_allowed",
    )


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


# --------------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------------


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

    __slots__ = ("name", "tokens", "_limiter", "_state", "_bucket", "_settled")

    def __init__(
        self,
        limiter: RateLimiter | None,
        tokens: int,
        name: str | None = None,
        state: _KeyState | None = None,
        bucket: list[float] | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens  # reserved at admission
        self._limiter = limiter
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
                headers = self._headers(principal.limits, st, now)
                headers["x-should-retry"] = "false"
                raise RateLimited(
                    f"Request too large for this API key's limit of {tpm} tokens per minute: it may use up "
                    f"to {n} tokens (prompt + max_tokens x n), so it can never fit. Reduce max_tokens, n or "
                    "the prompt.",
                    headers,
                )
            if st.token_sum + n > tpm:
                retry = max(1, math.ceil(self._tokens_retry(st, tpm, now, need=n)))
                headers = self._headers(principal.limits, st, now)
                headers["retry-after"] = str(retry)
                left = max(0, tpm - st.token_sum)
                raise RateLimited(
                    f"Rate limit reached: {tpm} tokens per minute for this API key (this request may use up "
                    f"to {n} tokens, {left} are left). Please retry after {retry} s.",
                    headers,
                )
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


# --------------------------------------------------------------------------------------------
# Parsing the keys file
# --------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (YAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue
        if duplicate:  # never echo the key: it may be an API key (seed dict format)
            raise KeysFileError(f"duplicate mapping key at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise KeysFileError("duplicate key in a JSON object")
        out[k] = v
    return out


def _redact_quoted(text: str) -> str:
    """Hide quoted parts of a parser message longer than a few characters: they may be a key.

    PyYAML quotes what it stumbled on (an alias, anchor or tag name, a character); an alias such
    as ``key: *my-secret`` would otherwise put the key into the error.
    """
    return re.sub(r"'[^']{5,}'|\"[^\"]{5,}\"", "'(not shown)'", text)


def _parse_text(text: str) -> Any:
    """JSON first (the seed format), else YAML. Error messages carry positions, never content."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError:
            pass  # maybe YAML flow style; let YAML report
        except RecursionError:
            raise KeysFileError("invalid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        # str(e) would include a snippet of the offending line, which may hold a key.
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _redact_quoted(str(e.problem or e.context or "syntax error"))
        raise KeysFileError(f"invalid YAML: {problem}{where}") from None
    except yaml.YAMLError:
        raise KeysFileError("invalid YAML") from None
    except RecursionError:
        raise KeysFileError("invalid YAML: nested too deeply") from None


def _shown(value: Any, known: Iterable[str]) -> str:
    """How an unknown field, limit or permission appears in an error: quoted, or not at all.

    Such a value may be a key (the seed format has keys as mapping keys, and a key pasted one
    level too deep becomes a field name), so it is echoed only when it is close to a valid word
    (a typo such as ``permision``) or is a short word of letters that cannot be a valid key.
    """
    text = value if isinstance(value, str) else None
    if text is not None and (
        difflib.get_close_matches(text, list(known), n=1, cutoff=0.75)
        or (len(text) < MIN_KEY_LENGTH and re.fullmatch(r"[A-Za-z][A-Za-z_]*", text))
    ):
        return repr(text)
    return "(not shown: it might be a key)"


def _unknown(values: Iterable[Any], known: Iterable[str]) -> str:
    """Comma-separated :func:`_shown` of the unknown values; the hidden ones are mentioned once."""
    words = list(known)
    return ", ".join(sorted({_shown(v, words) for v in values}))


def _looks_like_key(name: str) -> bool:
    """A name that is probably a key pasted into the wrong field (names are logged everywhere)."""
    return name.lower().startswith(("sk-", "sha256:")) and len(name) >= MIN_KEY_LENGTH


def _valid_name(name: Any) -> bool:
    """Whether ``name`` may be a key's name, and so be shown in errors and logs."""
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and not _looks_like_key(name)


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise KeysFileError(
            f"{where}: 'name' must be 1-128 characters of letters, digits and _ . @ : + - "
            "(it is shown in logs and metrics)"
        )
    if _looks_like_key(name):
        raise KeysFileError(
            f"{where}: 'name' looks like an API key (it starts with 'sk-' or 'sha256:'); names are shown "
            "in logs and metrics, so give a label such as alice or protalk"
        )
    return name


def _digest_of(raw: Any, where: str) -> bytes:
    """sha256 digest of a key entry's ``key`` (plain key, or ``sha256:<hex>``)."""
    if not isinstance(raw, str) or not raw:
        raise KeysFileError(f"{where}: 'key' is missing or not a string")
    m = _HASH_RE.match(raw)
    if m:
        return bytes.fromhex(m.group(1))
    if raw.startswith("sha256:"):
        raise KeysFileError(f"{where}: a hashed key must be 'sha256:' followed by 64 hex digits")
    if len(raw) < MIN_KEY_LENGTH:
        raise KeysFileError(
            f"{where}: key is shorter than {MIN_KEY_LENGTH} characters; create one with "
            "'python auth.py new-key --name NAME'"
        )
    if not all("\x21" <= c <= "\x7e" for c in raw):
        raise KeysFileError(f"{where}: key must be printable ASCII without spaces")
    return hashlib.sha256(raw.encode("ascii")).digest()


def _str_list(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise KeysFileError(f"{where}: '{what}' must be a list of strings")
    items = [v for v in items if v]
    if not items:
        raise KeysFileError(f"{where}: '{what}' is empty (leave it out for the default)")
    return items


def _parse_permissions(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset({"all"})
    perms = [p.lower() for p in _str_list(value, "permissions", where)]
    unknown = set(perms) - PERMISSIONS
    if unknown:
        raise KeysFileError(
            f"{where}: unknown permission(s) {_unknown(unknown, PERMISSIONS)}; "
            f"valid: {', '.join(sorted(PERMISSIONS))}"
        )
    return frozenset(perms)


def _parse_models(value: Any, where: str) -> frozenset[str] | None:
    return None if value is None else frozenset(_str_list(value, "models", where))


def _parse_limits(value: Any, where: str) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, Mapping):
        raise KeysFileError(f"{where}: 'limits' must be a mapping like {{rpm: 60, tpm: 100000, concurrency: 4}}")
    unknown = [k for k in value if k not in _LIMIT_FIELDS]
    if unknown:
        raise KeysFileError(
            f"{where}: unknown limit(s) {_unknown(unknown, _LIMIT_FIELDS)}; valid: rpm, tpm, concurrency"
        )
    out: dict[str, int | None] = {}
    for name in _LIMIT_FIELDS:
        v = value.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise KeysFileError(f"{where}: limit '{name}' must be a positive integer")
        out[name] = v
    return Limits(**out)


def _entry(
    item: Any, raw_key: Any, where: str, allowed: frozenset[str], limiter: RateLimiter | None
) -> tuple[bytes, Principal]:
    """One entry. ``where`` is its position; its name is added once the name is known to be valid."""
    if not isinstance(item, Mapping):
        raise KeysFileError(f"{where}: must be a mapping with name, key, permissions, ...")
    if "name" in item and "user" in item:
        raise KeysFileError(f"{where}: give either 'name' or 'user', not both")
    raw_name = item.get("name", item.get("user"))
    is_key = isinstance(raw_name, str) and isinstance(raw_key, str) and hmac.compare_digest(
        raw_name.encode(), raw_key.encode()
    )
    named = f"{where} ({raw_name})" if _valid_name(raw_name) and not is_key else where
    unknown = [k for k in item if k not in allowed]
    if unknown:
        raise KeysFileError(f"{named}: unknown field(s) {_unknown(unknown, allowed)}")
    name = _check_name(raw_name, where)
    if is_key:
        raise KeysFileError(f"{where}: 'name' is the key itself; names are shown in logs and metrics")
    where = named
    digest = _digest_of(raw_key, where)
    principal = Principal(
        name=name,
        permissions=_parse_permissions(item.get("permissions"), where),
        models=_parse_models(item.get("models"), where),
        limits=_parse_limits(item.get("limits"), where),
        _limiter=limiter,
    )
    return digest, principal


#: One parsed entry: (where it is, e.g. ``keys[3] (bob)``; its key's sha256; its Principal).
_Located = tuple[str, bytes, Principal]


def _parse_located(data: Any, limiter: RateLimiter | None) -> list[_Located]:
    """Entries from a parsed keys document: ``{keys: [...]}``, a bare list, or the seed dict format.

    Errors name an entry by its position, counted from 0 (``keys[3]``, or ``entry[3]`` in the
    seed format), and by its name once that is known to be valid; never by its key.
    """
    if data is None:
        return []
    out: list[_Located] = []
    if isinstance(data, Mapping) and "keys" in data:
        if isinstance(data["keys"], Mapping):  # the seed format nested under keys: (a guessable mistake)
            raise KeysFileError(
                "'keys:' must be a list of entries ('- name: ...'), not a mapping (see docs/api-keys.md)"
            )
        extra = [k for k in data if k != "keys"]
        if extra:
            raise KeysFileError(f"unknown top-level field(s) {_unknown(extra, ['keys'])}; expected only 'keys:'")
        data = data["keys"] or []
    if isinstance(data, list):
        for i, item in enumerate(data):
            raw = item.get("key") if isinstance(item, Mapping) else None
            digest, p = _entry(item, raw, f"keys[{i}]", _ENTRY_FIELDS, limiter)
            out.append((f"keys[{i}] ({p.name})", digest, p))
    elif isinstance(data, Mapping):  # seed format: {"sk-...": {"user": ..., "permissions": [...]}}
        for i, (raw, item) in enumerate(data.items()):
            digest, p = _entry(item, raw, f"entry[{i}]", _SEED_FIELDS, limiter)
            out.append((f"entry[{i}] ({p.name})", digest, p))
    else:
        raise KeysFileError("the keys file must be a mapping with a 'keys:' list (see docs/api-keys.md)")
    return out


def _parse_env_located(value: str, limiter: RateLimiter | None) -> list[_Located]:
    """``GPTOSS_API_KEYS``: comma-separated raw keys, named env-key-1..N, permission ``all``."""
    out: list[_Located] = []
    items = [v.strip() for v in value.split(",") if v.strip()]
    for i, raw in enumerate(items, 1):
        digest = _digest_of(raw, f"GPTOSS_API_KEYS item #{i}")
        name = f"env-key-{i}"
        out.append((f"GPTOSS_API_KEYS item #{i} ({name})", digest, Principal(name=name, _limiter=limiter)))
    return out


def _index(entries: Iterable[_Located]) -> dict[bytes, Principal]:
    """digest -> Principal; rejects a repeated name or key, naming both entries by position."""
    table: dict[bytes, tuple[str, Principal]] = {}
    names: dict[str, str] = {}
    for where, digest, p in entries:
        if p.name in names:
            raise KeysFileError(f"{where}: duplicate key name '{p.name}' (also {names[p.name]})")
        if digest in table:
            raise KeysFileError(f"{where}: the same key as {table[digest][0]}")
        names[p.name] = where
        table[digest] = (where, p)
    return {d: p for d, (_, p) in table.items()}


def _open_mode(path: Path) -> int | None:
    """The permission bits of ``path`` if group or others have any access to it, else None."""
    if os.name != "posix":
        return None  # Windows: st_mode does not describe ACLs
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    return mode if mode & 0o077 else None


def _load_located(path: str | os.PathLike[str], limiter: RateLimiter | None) -> list[_Located]:
    """Read and validate one keys file; raises KeysFileError (message safe to log)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysFileError(f"keys file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeysFileError(f"cannot read keys file {path}: {type(e).__name__}") from None
    entries = _parse_located(_parse_text(text), limiter)
    _index(entries)  # duplicate check within the file
    return entries


# --------------------------------------------------------------------------------------------
# The key store
# --------------------------------------------------------------------------------------------


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyStore:
    """The set of valid keys (sha256 digest -> Principal), reloadable from its file.

    A reload swaps the whole table at once, so a request keeps the Principal it started with;
    a broken file keeps the previous keys. Rate-limit state lives in :attr:`limiter`, keyed by
    key name, and so survives reloads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        env_keys: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.limiter = RateLimiter(clock)
        self._env_entries = _parse_env_located(env_keys, self.limiter)
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._signature = _file_signature(self.path) if self.path else None
        # Raises KeysFileError: a broken file at start is fatal.
        self._table, self._file_key_count = self._build()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> KeyStore:
        """Store from ``GPTOSS_KEYS_FILE`` + ``GPTOSS_API_KEYS``; NoKeysConfigured if there is none."""
        store = cls(settings.keys_file, settings.api_keys.get_secret_value(), clock=clock)
        if not len(store) and not settings.auth_disabled:
            raise NoKeysConfigured()
        return store

    def _build(self) -> tuple[dict[bytes, tuple[bytes, Principal]], int]:
        """(the new table, how many of its keys came from the file). Warns if the file is not private."""
        file_entries: list[_Located] = []
        if self.path is not None:
            file_entries = _load_located(self.path, self.limiter)
            mode = _open_mode(self.path)
            if mode is not None:
                logger.warning(
                    "API keys file %s can be accessed by group or others (mode %04o); make it readable by "
                    "the server's user only: chmod 600 %s",
                    self.path,
                    mode,
                    self.path,
                )
        table = {d: (d, p) for d, p in _index([*file_entries, *self._env_entries]).items()}
        return table, len(file_entries)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"KeyStore(path={str(self.path) if self.path else None!r}, keys={len(self._table)})"

    @property
    def names(self) -> list[str]:
        return sorted(p.name for _, p in self._table.values())

    def authenticate(self, key: str) -> Principal | None:
        """The Principal for ``key``, or None. Lookup by sha256, then a constant-time compare."""
        try:
            digest = hashlib.sha256(key.encode("ascii")).digest()
        except UnicodeEncodeError:
            return None
        stored, principal = self._table.get(digest, (bytes(32), None))  # one consistent snapshot
        if hmac.compare_digest(stored, digest) and principal is not None:
            return principal
        return None

    def reload(self) -> bool:
        """Re-read the keys file. On error keep the current keys, log an ERROR and return False.

        A file that now holds no key at all, where it held some before, counts as an error: it is
        far more likely half-written (an editor or ``>`` truncates before it writes) than meant to
        lock everyone out. The next change of the file is picked up as usual.
        """
        with self._lock:
            if self.path is not None:
                self._signature = _file_signature(self.path)
            try:
                table, file_keys = self._build()
                if file_keys == 0 and self._file_key_count > 0:
                    raise KeysFileError(
                        "it has no keys (empty or half-written?); to revoke every key, stop the server"
                    )
            except KeysFileError as e:
                logger.error(
                    "Reloading API keys from %s failed: %s. Keeping the %d keys loaded before.",
                    self.path,
                    e,
                    len(self._table),
                )
                return False
            self._table, self._file_key_count = table, file_keys
            self.limiter.retain(p.name for _, p in table.values())
        names = self.names
        if names:
            logger.info("Reloaded API keys from %s: %d keys (%s)", self.path, len(names), ", ".join(names))
        else:
            logger.warning("Reloaded API keys from %s: it has no keys, so every request is refused", self.path)
        return True

    def check_for_changes(self) -> bool:
        """Reload if the file's (mtime_ns, size, inode) changed; True if a reload was attempted."""
        if self.path is None:
            return False
        sig = _file_signature(self.path)
        if sig is None or sig == self._signature:  # missing: maybe mid-replace; try again later
            return False
        self.reload()
        return True

    def start_watching(self, interval: float = 2.0) -> None:
        """Poll the keys file every ``interval`` s in a daemon thread and reload on change."""
        if self.path is None or (self._watcher is not None and self._watcher.is_alive()):
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check_for_changes()
                except Exception:  # never let the watcher die silently
                    logger.exception("API keys file watcher failed; will retry")

        self._watcher = threading.Thread(target=run, name="api-keys-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None


def install_sighup_handler(store: KeyStore) -> bool:
    """Make SIGHUP reload ``store``. Returns whether a handler was installed.

    The reload runs in a helper thread so that the signal handler never blocks or re-enters
    a lock held by the interrupted code.
    """
    if not hasattr(signal, "SIGHUP"):
        logger.warning("SIGHUP is unavailable on this platform; the keys file is still polled for changes")
        return False

    def reload_in_thread() -> None:
        threading.Thread(target=store.reload, name="api-keys-reload", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda _sig, _frame: reload_in_thread())
        return True
    try:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_in_thread)
        return True
    except (RuntimeError, ValueError, NotImplementedError):
        logger.warning(
            "SIGHUP is unavailable here (not the main thread and no usable event loop); "
            "the keys file is still polled for changes"
        )
        return False


_sighup_installed_for: KeyStore | None = None


def _install_sighup_once(store: KeyStore) -> None:
    """install_sighup_handler for the process-wide store, at most once per process."""
    global _sighup_installed_for
    if _sighup_installed_for is not store and install_sighup_handler(store):
        _sighup_installed_for = store


# --------------------------------------------------------------------------------------------
# Process-wide store and startup checks
# --------------------------------------------------------------------------------------------

_store_lock = threading.Lock()
_store: KeyStore | None = None


def log_auth_mode(settings: Settings, store: KeyStore | None = None) -> None:
    """Log at start whether auth is on (INFO, key names only) or off (WARNING)."""
    if settings.auth_disabled:
        logger.warning(
            "API key authentication is DISABLED (GPTOSS_AUTH_DISABLED=true): anyone who can reach "
            "this server can use it. Never expose it to a network like this."
        )
    elif store is not None:
        logger.info("API key authentication is on: %d keys loaded (%s)", len(store), ", ".join(store.names))


def get_key_store(settings: Settings | None = None) -> KeyStore | None:
    """The process-wide KeyStore, created on first use; None when auth is disabled."""
    global _store
    settings = settings or get_settings()
    if settings.auth_disabled:
        return None
    with _store_lock:
        if _store is None:
            _store = KeyStore.from_settings(settings)
            log_auth_mode(settings, _store)
        return _store


def reset_key_store() -> None:
    """Forget the process-wide store (tests)."""
    global _store
    with _store_lock:
        if _store is not None:
            _store.stop_watching()
        _store = None


def validate_auth_config(settings: Settings | None = None) -> KeyStore | None:
    """Startup check: raise NoKeysConfigured / KeysFileError before the server is up.

    Returns the process-wide store (None when auth is disabled, after logging a warning).
    """
    settings = settings or get_settings()
    if settings.auth_disabled:
        log_auth_mode(settings)
        return None
    return get_key_store(settings)


# --------------------------------------------------------------------------------------------
# Paths and the middleware
# --------------------------------------------------------------------------------------------


def _normalise(path: str) -> str:
    """Lower-case, collapse ``//``, resolve ``.``/``..``, drop the trailing slash."""
    segments: list[str] = []
    for seg in path.lower().split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


def _route_permissions(norm: str) -> frozenset[str]:
    """Permissions a normalised path needs (the routes table); empty = any valid key.

    A path that is no route needs ``all``: the request guard answers those with a 404 first,
    and anything that reaches here by another way is denied to scoped keys.
    """
    route = find_route(norm)
    if route is None:
        return frozenset({"all"})
    return frozenset({route.permission}) if route.permission else frozenset()


def _raw_path_str(scope: Mapping[str, Any]) -> str | None:
    raw = scope.get("raw_path")
    if not isinstance(raw, (bytes, bytearray)):
        return None
    return bytes(raw).split(b"?", 1)[0].decode("latin-1")


def required_permissions(path: str, raw_path: str | None = None) -> frozenset[str]:
    """Every permission the request needs (empty = any valid key).

    The path is normalised several ways (as given, fully percent-decoded, and the raw path) and the
    key must satisfy all of them, so an encoded or dotted path never needs less than its route.
    """
    candidates = {path}
    decoded = path
    for _ in range(3):  # %252F and friends
        decoded = unquote(decoded)
        candidates.add(decoded)
    if raw_path is not None:
        candidates.add(unquote(raw_path))
    perms: set[str] = set()
    for c in candidates:
        perms |= _route_permissions(_normalise(c))
    return frozenset(perms)


def _is_plain(path: str) -> bool:
    """No encoding, empty, ``.`` or ``..`` segments: safe for a prefix match."""
    if "%" in path or "\\" in path:
        return False
    inner = path.split("/")[1:-1] if path.endswith("/") else path.split("/")[1:]
    return all(seg not in ("", ".", "..") for seg in inner)


def _is_cors_preflight(scope: Mapping[str, Any]) -> bool:
    """OPTIONS with ``Origin`` and ``Access-Control-Request-Method``: what a browser sends, without a key.

    Any other OPTIONS request needs a key like every request, so that OPTIONS cannot be used to
    reach a route (or probe one) unauthenticated.
    """
    if scope.get("method", "GET").upper() != "OPTIONS":
        return False
    names = {bytes(k).lower() for k, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names


class AuthMiddleware:
    """Pure ASGI middleware: default deny, Bearer keys, per-route permissions, per-key limits.

    BentoML builds it as ``AuthMiddleware(app)``; tests pass ``store``, ``settings`` and ``clock``.
    Settings and the process-wide store are resolved on the first request, not here: Starlette
    builds middleware inside the ASGI lifespan call, and uvicorn (lifespan="auto") would swallow
    an exception raised here. The service's ``validate_auth_config()`` is the startup check.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        store: KeyStore | None = None,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.clock = clock
        self._settings = settings
        self._store = store
        self._ready = False
        self._setup_error_logged = False

    def _setup(self) -> None:
        """Resolve settings and store once; raises NoKeysConfigured / KeysFileError."""
        if self._ready:
            return
        settings = self._settings or get_settings()
        if settings.auth_disabled:
            log_auth_mode(settings)
            self._store = None
        elif self._store is None:  # production: the process-wide store, watched and SIGHUP-able
            self._store = get_key_store(settings)
            if self._store is not None:
                self._store.start_watching()
                _install_sighup_once(self._store)
        self._settings = settings
        self._ready = True

    @property
    def settings(self) -> Settings:
        self._setup()
        assert self._settings is not None
        return self._settings

    @property
    def disabled(self) -> bool:
        return self.settings.auth_disabled

    # -- path policy ------------------------------------------------------------------------
    def _is_open(self, scope: Mapping[str, Any]) -> bool:
        """Exact-match allowlist; the raw path must be the same string (no encoding tricks)."""
        if scope["type"] != "http":
            return False
        if _is_cors_preflight(scope):
            return True  # the CORS middleware inside answers it; a browser never sends a key with it
        path = scope.get("path", "")
        raw = _raw_path_str(scope)
        if raw is not None and raw != path:
            return False
        route = find_route(path)
        if route is None:
            return False
        if route.access == "probe":
            return True
        if route.access == "metrics":
            return self.settings.public_metrics
        if route.access == "docs":
            return self.settings.public_docs and (not route.prefix or _is_plain(path))
        return False

    # -- the key ------------------------------------------------------------------------------
    @staticmethod
    def _bearer(scope: Mapping[str, Any]) -> tuple[str | None, str]:
        """(key, "") or (None, reason). The reason is for the client and never has key material."""
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
        if not values:
            return None, "Missing API key. Send it as 'Authorization: Bearer <key>'."
        if len(values) > 1:
            return None, "More than one Authorization header; send exactly one."
        value = values[0]
        malformed = "Malformed Authorization header; expected 'Authorization: Bearer <key>'."
        if len(value) > MAX_AUTH_HEADER_BYTES:
            return None, malformed
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None, malformed
        text = text.strip(" \t")
        scheme, sep, rest = text.partition(" ")
        if not sep:
            scheme, sep, rest = text.partition("\t")
        if not sep or scheme.lower() != "bearer":
            return None, (
                "Missing API key. Send it as 'Authorization: Bearer <key>'." if not text else malformed
            )
        key = rest.strip(" \t")
        if not key:
            return None, "Missing API key. Send it as 'Authorization: Bearer <key>'."
        if not all("\x21" <= c <= "\x7e" for c in key):
            return None, malformed
        return key, ""

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        websocket = kind == "websocket"
        try:
            self._setup()
        except (NoKeysConfigured, KeysFileError) as e:  # fail closed; the log says how to fix it
            if not self._setup_error_logged:
                logger.error("API key authentication is not configured, refusing all requests: %s", e)
                self._setup_error_logged = True
            if websocket:
                await send({"type": "websocket.close", "code": 1011, "reason": "authentication not configured"})
            else:
                err = APIError(503, "Authentication is not configured on this server.", code="auth_not_configured")
                await send_error(send, err)
            return
        if self.disabled or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        store = self._store
        assert store is not None

        key, reason = self._bearer(scope)
        principal = store.authenticate(key) if key is not None else None
        if principal is None:
            logger.debug("401 for %s: %s", scope.get("path"), reason or "unknown API key")
            if websocket:
                await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
                return
            await send_error(
                send,
                APIError(
                    401,
                    reason or "Incorrect API key provided.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                ),
            )
            return

        # Known from here on, also for the 403/429 below: the access log names the key.
        state = scope.setdefault("state", {})
        state["key_name"] = principal.name

        needed = required_permissions(scope.get("path", ""), _raw_path_str(scope))
        missing = sorted(p for p in needed if not principal.has_permission(p))
        if missing:
            logger.info("403 for key '%s' on %s: needs %s", principal.name, scope.get("path"), missing)
            if websocket:
                await send({"type": "websocket.close", "code": 1008, "reason": "permission denied"})
                return
            perm = missing[0]
            hint = " (or 'chat' / 'completions')" if perm == "models" else ""
            await send_error(
                send,
                APIError(
                    403,
                    f"This API key lacks the '{perm}' permission{hint} that this endpoint requires.",
                    code="permission_denied",
                ),
            )
            return

        try:
            extra = store.limiter.acquire(principal, self.clock())
        except RateLimited as e:
            logger.info("429 for key '%s': %s", principal.name, e.message)
            if websocket:
                await send({"type": "websocket.close", "code": 1013, "reason": "rate limit exceeded"})
                return
            await send_error(send, APIError(429, e.message, code="rate_limit_exceeded", headers=e.headers))
            return

        state["principal"] = principal

        wrapped = send
        if extra:
            extra_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

            async def wrapped(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    present = {k.lower() for k, _ in message.get("headers", ())}
                    add = [(k, v) for k, v in extra_headers if k not in present]
                    message = {**message, "headers": [*message.get("headers", ()), *add]}
                await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            store.limiter.release(principal)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _q(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(s)


def _flow_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _cmd_new_key(args: argparse.Namespace) -> int:
    try:
        name = _check_name(args.name, "--name")
        perms = _parse_permissions(args.permissions, "--permissions") if args.permissions else frozenset({"all"})
        models = _parse_models(args.models, "--models") if args.models else None
        limits = {k: getattr(args, k) for k in _LIMIT_FIELDS if getattr(args, k) is not None}
        _parse_limits(limits, "limits")
    except KeysFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = "sk-" + secrets.token_urlsafe(32)
    order = [p for p in ("all", "chat", "completions", "models", "generate") if p in perms]
    lines = [f"  - name: {_q(name)}", f"    key: {_q(key if args.plain else hash_key(key))}"]
    lines.append(f"    permissions: {_flow_list(order)}")
    if models:
        lines.append(f"    models: {_flow_list(sorted(models))}")
    if limits:
        lines.append("    limits: {" + ", ".join(f"{k}: {v}" for k, v in limits.items()) + "}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    if not args.plain:  # stderr, so that `>> keys.yaml` appends only the entry and the terminal shows the key
        print(
            f"API key for '{name}' (shown once; hand it to the user, it is not stored anywhere):\n{key}",
            file=sys.stderr,
        )
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if len(key) < MIN_KEY_LENGTH or not all("\x21" <= c <= "\x7e" for c in key):
        print(f"error: a key must be at least {MIN_KEY_LENGTH} printable ASCII characters", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _cmd_check_file(args: argparse.Namespace) -> int:
    try:
        table = _index(_load_located(args.path, None))
    except KeysFileError as e:
        print(f"{args.path}: INVALID: {e}", file=sys.stderr)
        return 1
    mode = _open_mode(Path(args.path))
    if mode is not None:
        print(
            f"{args.path}: warning: group or others can access it (mode {mode:04o}); chmod 600 {args.path}",
            file=sys.stderr,
        )
    print(f"{args.path}: OK, {len(table)} keys")
    for p in sorted(table.values(), key=lambda p: p.name):
        models = ",".join(sorted(p.models)) if p.models is not None else "(all)"
        limits = ", ".join(f"{k}={getattr(p.limits, k)}" for k in _LIMIT_FIELDS if getattr(p.limits, k) is not None)
        print(f"  {p.name}: permissions={','.join(sorted(p.permissions))} models={models} limits={limits or '(none)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python auth.py", description="Manage API keys for the gpt-oss server.")
    sub = parser.add_subparsers(dest="command", required=True)

    new = sub.add_parser(
        "new-key",
        help="generate a key and print a keys-file entry",
        description="Print a new entry for keys.yaml on stdout, with the key's sha256; the key itself goes to "
        "stderr, once. Typical use: python auth.py new-key --name alice >> keys.yaml",
    )
    new.add_argument("--name", required=True, help="label shown in logs and metrics (never the key)")
    new.add_argument("--permissions", help="comma-separated: all, chat, completions, models, generate (default all)")
    new.add_argument("--models", help="comma-separated models the key may use (default: all)")
    new.add_argument("--rpm", type=int, help="requests per minute")
    new.add_argument("--tpm", type=int, help="tokens per minute")
    new.add_argument("--concurrency", type=int, help="requests in flight at once")
    form = new.add_mutually_exclusive_group()
    form.add_argument(
        "--plain", action="store_true", help="put the key itself in the entry (stdout) instead of its sha256"
    )
    form.add_argument("--hashed", action="store_true", help="the default (kept for old scripts): store only sha256")
    new.set_defaults(func=_cmd_new_key)

    hk = sub.add_parser("hash-key", help="print sha256:<hex> of a key (use - to read it from stdin)")
    hk.add_argument("key")
    hk.set_defaults(func=_cmd_hash_key)

    cf = sub.add_parser("check-file", help="validate a keys file and list names and permissions")
    cf.add_argument("path")
    cf.set_defaults(func=_cmd_check_file)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

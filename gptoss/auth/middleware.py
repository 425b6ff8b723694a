"""AuthMiddleware: default deny, Bearer keys, per-route permissions, per-key limits, on every request.

Paths are normalised before the route's permission is looked up, so that encoded or dotted
spellings of a route never need less than the route itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from gptoss.auth.limits import LimitsUnavailable, RateLimited, limits_unavailable
from gptoss.auth.principal import KeysFileError, NoKeysConfigured
from gptoss.auth.store import KeyStore, _install_sighup_once, get_key_store, log_auth_mode
from gptoss.errors import APIError, send_error
from gptoss.routes import find_route
from gptoss.settings import Settings, get_settings

logger = logging.getLogger(__name__)

MAX_AUTH_HEADER_BYTES = 8192


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
        except LimitsUnavailable as e:
            if websocket:
                await send({"type": "websocket.close", "code": 1011, "reason": "limits unavailable"})
                return
            await send_error(send, limits_unavailable(e))
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

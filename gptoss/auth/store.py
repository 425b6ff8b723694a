"""The KeyStore: the valid keys, reloaded when the file changes or on SIGHUP; and the process-wide one.

The middleware and the service's startup check share the process-wide store, so the keys file
is read, watched and validated once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptoss.auth.keyfile import _index, _load_located, _Located, _open_mode, _parse_env_located
from gptoss.auth.limits import RateLimiter
from gptoss.auth.principal import KeysFileError, NoKeysConfigured, Principal
from gptoss.settings import Settings, get_settings, redacted_url

logger = logging.getLogger(__name__)


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
        limiter: Any = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        # In this process (the default), or shared by every replica (shared_limits).
        self.limiter = limiter if limiter is not None else RateLimiter(clock)
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
        limiter = None
        if settings.limits_store != "memory":
            from gptoss.auth.shared_limits import RedisRateLimiter

            limiter = RedisRateLimiter(settings.limits_store, inflight_ttl=int(settings.request_timeout) + 60)
            limiter.ping()  # an unreachable store stops the start, as a broken keys file does
            logger.info("Per-key limits are shared through %s", redacted_url(settings.limits_store))
        store = cls(settings.keys_file, settings.api_keys.get_secret_value(), clock=clock, limiter=limiter)
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

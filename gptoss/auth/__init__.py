"""API keys: who may call this server, which routes and models they may use, and how often.

A pure ASGI middleware (:class:`AuthMiddleware`) checks ``Authorization: Bearer <key>`` on every
request except a short, exact allowlist (health probes, CORS preflight, and optionally docs and
metrics). Keys come from a YAML/JSON keys file (``GPTOSS_KEYS_FILE``) and/or ``GPTOSS_API_KEYS``;
the file is re-read on change without a restart. Each key may carry permissions, a model list and
rpm / tpm / concurrency limits. Key material never appears in logs, errors or reprs: only the
key's *name* does.

Callers import from here (``from gptoss.auth import AuthMiddleware``). The modules: principal
(who a key is), keyfile (the keys file), limits (rate limits), store (the loaded keys),
middleware (the checks per request), cli (``python auth.py --help``).
"""

from gptoss.auth.cli import main
from gptoss.auth.keyfile import hash_key
from gptoss.auth.limits import RateLimiter, Reservation, reserve_tokens
from gptoss.auth.middleware import AuthMiddleware, required_permissions
from gptoss.auth.principal import (
    PERMISSIONS,
    KeysFileError,
    Limits,
    NoKeysConfigured,
    Principal,
    check_model_access,
    get_principal,
)
from gptoss.auth.store import (
    KeyStore,
    get_key_store,
    install_sighup_handler,
    log_auth_mode,
    reset_key_store,
    validate_auth_config,
)

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

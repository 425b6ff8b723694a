"""API keys: who may call the server, on which routes and models, and how often.

Callers import from here (``from gptoss.auth import AuthMiddleware``), not from the modules.
"""

from gptoss.auth.keyfile import (
    PERMISSIONS,
    AuthMiddleware,
    KeysFileError,
    KeyStore,
    Limits,
    NoKeysConfigured,
    Principal,
    RateLimiter,
    Reservation,
    check_model_access,
    get_key_store,
    get_principal,
    hash_key,
    install_sighup_handler,
    log_auth_mode,
    main,
    required_permissions,
    reserve_tokens,
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

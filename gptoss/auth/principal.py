"""Who a key is: Principal, its Limits and permissions, and the errors of a bad key setup.

The other auth modules build on these types, so this one imports none of them at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptoss.errors import APIError

if TYPE_CHECKING:
    from gptoss.auth.limits import RateLimiter

#: Every permission a key may hold. ``all`` grants everything.
PERMISSIONS: frozenset[str] = frozenset({"all", "chat", "completions", "responses", "models", "generate"})
#: Permissions that also let a key list models (clients such as ProTalk list models first).
_MODEL_LISTERS = frozenset({"models", "chat", "completions", "responses"})

_HOW_TO_ADD_KEYS = (
    "No API keys are configured, and authentication is on (secure by default). Either:\n"
    '  1. create a keys file:  echo "keys:" > keys.yaml && chmod 600 keys.yaml && '
    "python auth.py new-key --name NAME >> keys.yaml\n"
    "     (the file gets the key's sha256; the key itself is printed on the terminal, once)\n"
    "     then start the server with  GPTOSS_KEYS_FILE=keys.yaml\n"
    "  2. or pass keys directly:  GPTOSS_API_KEYS=sk-your-long-random-key[,sk-another-key]\n"
    "  3. or (local testing only, never on a network) turn auth off:  GPTOSS_AUTH_DISABLED=true"
)


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

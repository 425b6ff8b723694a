"""The keys file (YAML or JSON) and GPTOSS_API_KEYS: parsing, validation, hashing.

Kept apart from the store so the CLI can check a file without starting one. Error messages
name an entry by position (and valid name), never by its key: they are logged.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gptoss.auth.principal import PERMISSIONS, KeysFileError, Limits, Principal

if TYPE_CHECKING:
    from gptoss.auth.limits import RateLimiter

MIN_KEY_LENGTH = 16
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$")
_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_ENTRY_FIELDS = frozenset({"name", "user", "key", "permissions", "models", "limits", "description"})
_SEED_FIELDS = frozenset({"name", "user", "permissions", "models", "limits", "description"})
_LIMIT_FIELDS = ("rpm", "tpm", "concurrency")


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a key: what a keys file may store instead of the key itself."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


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

"""The command line (``python auth.py``): create a key, hash a key, check a keys file."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path

from gptoss.auth.keyfile import (
    _LIMIT_FIELDS,
    MIN_KEY_LENGTH,
    _check_name,
    _index,
    _load_located,
    _open_mode,
    _parse_limits,
    _parse_models,
    _parse_permissions,
    hash_key,
)
from gptoss.auth.principal import KeysFileError


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
    new.add_argument(
        "--permissions", help="comma-separated: all, chat, completions, responses, models, generate (default all)"
    )
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

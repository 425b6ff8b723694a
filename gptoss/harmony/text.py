"""Token ids -> text: the vocabulary's bytes per token, a UTF-8-safe incremental decoder, stop strings.

Harmony does not expose per-token bytes, so the table is read once from the same sha-checked
``o200k_base.tiktoken`` that harmony itself loads (``gptoss.harmony.vocab`` sets the variable).
"""

from __future__ import annotations

import base64
import codecs
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from gptoss.harmony.vocab import ENV_VAR, VOCAB_FILE, load_encoding

__all__ = ["IncrementalDecoder", "StopMatcher", "is_special", "token_bytes", "token_text"]


@functools.lru_cache(maxsize=1)
def _vocab() -> tuple[tuple[bytes, ...], frozenset[int]]:
    """id -> bytes for the whole vocabulary (special tokens map to their names), and the special ids."""
    enc = load_encoding()
    path = Path(os.environ[ENV_VAR]) / VOCAB_FILE
    table: list[bytes] = []
    for line in path.read_bytes().splitlines():
        if not line:
            continue
        tok, rank = line.split()
        if int(rank) != len(table):  # the file is dense and ordered; guard anyway
            raise RuntimeError(f"{path}: unexpected rank {rank.decode()} at line {len(table)}")
        table.append(base64.b64decode(tok))
    specials: set[int] = set()
    token_id = len(table)
    while token_id < 300_000:  # o200k_harmony ends at 201088; the bound only stops a runaway loop
        try:
            if not enc.is_special_token(token_id):
                break
            name = enc.decode([token_id])
        except Exception:  # harmony raises past the end of its vocabulary
            break
        table.append(name.encode())
        specials.add(token_id)
        token_id += 1
    return tuple(table), frozenset(specials)


def is_special(token_id: int) -> bool:
    """A special token (``<|end|>``...) or an id outside the vocabulary: never text."""
    table, specials = _vocab()
    return token_id in specials or not 0 <= token_id < len(table)


def token_bytes(token_id: int) -> bytes:
    """The bytes of one token (special tokens: their name, e.g. ``b"<|end|>"``; unknown ids: ``b""``)."""
    table, _ = _vocab()
    return table[token_id] if 0 <= token_id < len(table) else b""


def token_text(token_id: int) -> str:
    """One token as text for logprobs; a token holding part of a UTF-8 character shows U+FFFD."""
    return token_bytes(token_id).decode("utf-8", errors="replace")


class IncrementalDecoder:
    """Token ids -> text, never splitting a multi-byte UTF-8 character across outputs.

    Incomplete bytes are held back until the character completes; invalid bytes become U+FFFD.
    Special tokens (and ids outside the vocabulary) produce no text.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        _vocab()  # load eagerly so the first token does not pay for it mid-stream

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        if is_special(token_id):
            return ""
        return self._decoder.decode(token_bytes(token_id))

    def flush(self) -> str:
        """Release held-back bytes (as U+FFFD: the character never completed) and reset."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out


class StopMatcher:
    """Cuts streamed text before the first stop string, holding back what could start one.

    ``push`` returns ``(safe_text, hit)``; once a stop string is hit nothing after it is returned.
    Text that might be the beginning of a stop string is held until it is decided; ``flush``
    releases it at the end of a generation that hit no stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buf = ""
        self._hit = False

    def push(self, text: str) -> tuple[str, bool]:
        if self._hit:
            return "", True
        if not self._stops:
            return text, False
        self._buf += text
        cut = min((i for i in (self._buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buf, self._hit = self._buf[:cut], "", True
            return out, True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._buf)), hold, -1):
                if self._buf.endswith(stop[:n]):
                    hold = n
                    break
        out = self._buf[: len(self._buf) - hold]
        self._buf = self._buf[len(out) :]
        return out, False

    def flush(self) -> str:
        if self._hit:
            return ""
        out, self._buf = self._buf, ""
        return out

"""Grammar-constrained sampling: a per-sequence llguidance matcher and the token mask it gives.

A request whose ``SamplingParams.grammar`` is set (llguidance's Lark syntax, built by the API
layer) gets a matcher when it joins the engine. Each step, the masks of every constrained row are
computed in one call (llguidance's Rust threads, without the GIL) into a packed bitmask, and the
rows' disallowed logits are set to -inf before the sampler runs; the sampled token then advances
the matcher. Rows without a grammar are not touched, so they sample exactly as they would alone.

Matchers are built from a cached prototype per grammar text (a small LRU: the same schema comes
back request after request), copied per sequence.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class GrammarRejected(RuntimeError):
    """The matcher refused a token or a grammar: that sequence fails, the batch goes on."""


class Grammars:
    """Matchers for grammar texts, from an LRU of compiled prototypes (engine thread only)."""

    def __init__(self, tokenizer: Any, max_cached: int = 64) -> None:
        import llguidance
        import llguidance.torch as llt

        self._llg = llguidance
        self._llt = llt
        self._tokenizer = tokenizer
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._max = max_cached
        self._lock = threading.Lock()
        self.vocab = int(tokenizer.vocab_size)
        self._bitmask: torch.Tensor | None = None

    def bitmask(self, rows: int) -> torch.Tensor:
        """A packed bitmask for ``rows`` matchers, reused step to step (each fill overwrites its row)."""
        if self._bitmask is None or self._bitmask.shape[0] < rows:
            self._bitmask = self._llt.allocate_token_bitmask(max(rows, 16), self.vocab)
        return self._bitmask[:rows]

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        """Row ``row`` of ``bitmask``: the tokens ``matcher`` allows next."""
        self._llt.fill_next_token_bitmask(matcher, bitmask, row)

    def matcher(self, grammar: str) -> Any:
        with self._lock:
            proto = self._cache.get(grammar)
            if proto is not None:
                self._cache.move_to_end(grammar)
        if proto is None:
            proto = self._llg.LLMatcher(self._tokenizer, self._llg.LLMatcher.grammar_from_lark(grammar), log_level=0)
            if proto.is_error():
                raise GrammarRejected(f"invalid grammar: {proto.get_error()}")
            with self._lock:
                self._cache[grammar] = proto
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return proto.deep_copy()


@torch.inference_mode()
def apply_grammar_masks(grammars: Grammars, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[Any]) -> None:
    """Set the logits of tokens each matcher forbids to -inf, in place, for the given rows.

    The matchers fill a packed bitmask (bit j of int32 word w = token 32*w + j); numpy unpacks it
    for all rows in one call, and each row is masked with one torch op. Few torch ops matter more
    than their arithmetic: each one may release the GIL, and in the server the event loop holds
    it between tokens, so the engine thread pays a hand-off per op.
    """
    vocab = grammars.vocab
    bitmask = grammars.bitmask(len(rows))
    for i, m in enumerate(matchers):  # microseconds each: cheaper than a thread pool's hand-off
        grammars.fill(m, bitmask, i)
    forbidden = torch.from_numpy(forbidden_mask(bitmask.numpy(), vocab)).to(logits.device)
    for j, row in enumerate(rows):
        logits[row, :vocab].masked_fill_(forbidden[j], float("-inf"))
    if logits.shape[-1] > vocab:  # the model's vocabulary padded past the tokenizer's: never allowed
        logits[list(rows), vocab:] = float("-inf")


def forbidden_mask(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """Packed int32 words (bit j of word w = token 32*w + j) -> bool [rows, vocab], True = forbidden."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    return bits == 0


def advance(matcher: Any, token: int) -> None:
    """Feed the sampled token to the matcher; a refusal fails the sequence (it cannot happen under its own mask)."""
    if not matcher.consume_token(token):
        raise GrammarRejected(f"the grammar refused token {token}: {matcher.get_error() or 'not allowed'}")

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

import torch

logger = logging.getLogger(__name__)


class GrammarRejected(RuntimeError):
    """The matcher refused a token or a grammar: that sequence fails, the batch goes on."""


class Grammars:
    """Matchers for grammar texts, from an LRU of compiled prototypes (engine thread only)."""

    def __init__(self, tokenizer: Any, max_cached: int = 64) -> None:
        import llguidance

        self._llg = llguidance
        self._tokenizer = tokenizer
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._max = max_cached
        self._lock = threading.Lock()
        self.executor = llguidance.LLExecutor()
        self.vocab = int(tokenizer.vocab_size)

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

    The matchers fill one packed bitmask together (llguidance's threads, no GIL); it is unpacked
    with a byte lookup table into a bool mask (llguidance's own CPU apply is far slower) and each
    row is masked in place. Logits past the tokenizer's vocabulary (padding) are never allowed.
    """
    import llguidance.torch as llt

    bitmask = llt.allocate_token_bitmask(len(rows), grammars.vocab)
    llt.fill_next_token_bitmask_par(grammars.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
    forbidden = _forbidden(bitmask.to(logits.device), grammars.vocab)
    for j, row in enumerate(rows):
        logits[row, : grammars.vocab].masked_fill_(forbidden[j], float("-inf"))
        if logits.shape[-1] > grammars.vocab:
            logits[row, grammars.vocab :] = float("-inf")


# Bit i of a byte set = token allowed; row b of this table says which of its 8 tokens are not.
_BYTE_FORBIDS = ((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1) == 0


def _forbidden(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Packed int32 words (bit j of word w = token 32*w + j, little-endian) -> bool [rows, vocab], True = forbidden."""
    table = _BYTE_FORBIDS.to(bitmask.device)
    return table[bitmask.view(torch.uint8).long()].view(bitmask.shape[0], -1)[:, :vocab]


def advance(matcher: Any, token: int) -> None:
    """Feed the sampled token to the matcher; a refusal fails the sequence (it cannot happen under its own mask)."""
    if not matcher.consume_token(token):
        raise GrammarRejected(f"the grammar refused token {token}: {matcher.get_error() or 'not allowed'}")

"""xgrammar vs llguidance on CPU: the two grammar libraries structured output could use.

For the o200k_harmony vocabulary and two JSON schemas: the time to build each library's view of
the vocabulary and to compile each schema, and the median time per token to compute the
next-token mask (both write the same packed int32 bitmask) while sampling an answer from random
logits. Applying the mask is ours either way (gptoss/engine/grammar.py), so it is not timed.
Both libraries are in .venv-vllm (vLLM brings them):

    .venv-vllm/bin/python bench/grammar_backends.py

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptoss.engine.grammar import forbidden_mask
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE as V
from gptoss.harmony.vocab import text_encoding

RETURN = 200002
SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 150}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["x", "y"]},
                                                                     "minItems": 1, "maxItems": 4}},
                "required": ["id", "tags"],
                "additionalProperties": False,
            },
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
        },
        "required": ["user", "ok"],
        "additionalProperties": False,
    },
}
# A matcher factory: schema -> (compute the next mask, accept a token -> still going).
Factory = Callable[[dict[str, Any]], tuple[Callable[[], torch.Tensor], Callable[[int], bool]]]


def measure(name: str, make: Factory, steps: int = 150) -> None:
    for schema_name, schema in SCHEMAS.items():
        t0 = time.perf_counter()
        fill, accept = make(schema)
        compile_ms = (time.perf_counter() - t0) * 1e3
        torch.manual_seed(0)
        times = []
        for _ in range(steps):
            logits = torch.randn(1, V)
            t1 = time.perf_counter()
            bitmask = fill()
            times.append(time.perf_counter() - t1)
            logits.masked_fill_(torch.from_numpy(forbidden_mask(bitmask.numpy(), V)), float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits[0], 0), 1))
            if not accept(token):
                break
        print(f"{name:12s} {schema_name:7s} compile {compile_ms:7.1f} ms   mask median "
              f"{statistics.median(times) * 1e6:6.0f} us over {len(times)} tokens")


def main() -> None:
    enc = text_encoding()
    specials = {k: v for k, v in enc._special_tokens.items() if v < V}
    inside = tiktoken.Encoding("o200k", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                               special_tokens=specials)

    import llguidance
    import llguidance.tiktoken
    import llguidance.torch as llt

    t0 = time.perf_counter()
    tokenizer = llguidance.tiktoken.lltokenizer_from_encoding(inside, n_vocab=V, eos_token=RETURN)
    print(f"llguidance vocabulary view {time.perf_counter() - t0:.2f} s")

    def make_llg(schema: dict[str, Any]):
        compact = {**schema, "x-guidance": {"whitespace_flexible": False}}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(compact)
        matcher = llguidance.LLMatcher(tokenizer, grammar)
        bitmask = llt.allocate_token_bitmask(1, V)

        def fill() -> torch.Tensor:
            llt.fill_next_token_bitmask(matcher, bitmask, 0)
            return bitmask

        return fill, lambda t: matcher.consume_token(t) and not matcher.is_stopped()

    measure("llguidance", make_llg)

    import xgrammar as xgr

    vocab = [inside.decode_single_token_bytes(i) if i < 199998 else b"" for i in range(V)]
    for text, i in specials.items():
        vocab[i] = text.encode()
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, vocab_size=V, stop_token_ids=[RETURN])
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    print(f"xgrammar vocabulary view {time.perf_counter() - t0:.2f} s")

    def make_xgr(schema: dict[str, Any]):
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        bitmask = xgr.allocate_token_bitmask(1, V)

        def fill() -> torch.Tensor:
            matcher.fill_next_token_bitmask(bitmask)
            return bitmask

        return fill, lambda t: matcher.accept_token(t) and not matcher.is_terminated()

    measure("xgrammar", make_xgr)


if __name__ == "__main__":
    main()

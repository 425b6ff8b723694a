"""Grammar-constrained sampling in our engine, on the tiny random-weight model.

The weights are noise, so every answer that follows its grammar shows the constraint at work.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from gptoss.engine.core import Engine, EngineConfig
from gptoss.engine.types import GenerationRequest, SamplingParams, SequenceFailed
from gptoss.harmony.grammar import AnswerSpec, ToolSpec, grammar_tokenizer, harmony_grammar
from gptoss.harmony.vocab import text_encoding

RETURN, CALL, END, MESSAGE = 200002, 200012, 200007, 200008
PROMPT = [200006, 1428, 200008, 13225, 11, 1495, 553, 481, 30, 200007, 200006, 173781]  # ...<|start|>assistant
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "n", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammar_engine(model):
    engine = Engine(lambda: model, EngineConfig(grammar_tokenizer=grammar_tokenizer()), max_context=4096)
    engine.start()
    engine.wait_ready(60)
    yield engine
    asyncio.run(engine.shutdown(1))


async def run(engine: Engine, params: SamplingParams, prompt=PROMPT) -> list[int]:
    return [ev.token_id async for ev in engine.submit(GenerationRequest(list(prompt), params))]


def params(grammar: str | None, *, temperature: float = 1.0, max_tokens: int = 300, seed: int | None = None):
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, seed=seed, stop_token_ids=(RETURN, CALL), grammar=grammar
    )


def split_final(tokens: list[int]) -> tuple[str, str]:
    """(analysis text, final text) of a Harmony turn the grammar produced."""
    text = text_encoding().decode(tokens)
    assert tokens[-1] == RETURN, text
    head, _, final = text.partition("<|channel|>final<|message|>")
    analysis = head.removeprefix("<|channel|>analysis<|message|>").removesuffix("<|end|><|start|>assistant")
    return analysis, final.removesuffix("<|return|>")


def test_json_schema_answers_validate_and_reasoning_stays_apart(grammar_engine):
    engine = grammar_engine
    grammar = harmony_grammar(AnswerSpec(json_schema=SCHEMA, reasoning_budget=12))

    async def go():
        return await asyncio.gather(*(run(engine, params(grammar, seed=s)) for s in range(8)))

    for tokens in asyncio.run(go()):
        analysis, final = split_final(tokens)
        jsonschema.validate(json.loads(final), SCHEMA)
        assert "<|" not in analysis and len(tokens) < 300


def test_reasoning_budget_closes_the_analysis(grammar_engine):
    engine = grammar_engine
    budget = 5
    grammar = harmony_grammar(AnswerSpec(reasoning_budget=budget))
    for seed in range(4):
        tokens = asyncio.run(run(engine, params(grammar, seed=seed, max_tokens=40)))
        if END in tokens:  # the model opened an analysis: it is closed after at most `budget` tokens of text
            assert tokens.index(END) - tokens.index(MESSAGE) - 1 <= budget
            after = text_encoding().decode(tokens).split("<|end|>", 1)[1]
            assert after.startswith("<|start|>assistant<|channel|>final<|message|>")


def test_required_call_names_a_tool_and_parses(grammar_engine):
    engine = grammar_engine
    enc = text_encoding()
    tools = [ToolSpec("get_weather", {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                                      "required": ["city"], "additionalProperties": False}, strict=True),
             ToolSpec("get_time", None)]
    grammar = harmony_grammar(AnswerSpec(tools=tools), prefill="required")
    prompt = PROMPT + enc.encode("<|channel|>commentary to=functions", allowed_special="all")
    for seed in range(4):
        tokens = asyncio.run(run(engine, params(grammar, seed=seed), prompt))
        text = enc.decode(tokens)
        assert tokens[-1] == CALL, text
        header, _, args = text.removesuffix("<|call|>").partition("<|constrain|>json<|message|>")
        name = header.removeprefix(".").strip()
        assert name in ("get_weather", "get_time"), text
        value = json.loads(args)
        if name == "get_weather":
            assert value["city"] in ("Paris", "Rome")
        assert isinstance(value, dict)


def test_unconstrained_neighbours_are_unchanged(grammar_engine):
    engine = grammar_engine
    plain = params(None, temperature=0.0, max_tokens=24)
    alone = asyncio.run(run(engine, plain))
    grammar = harmony_grammar(AnswerSpec(json_schema=SCHEMA, reasoning_budget=8))

    async def mixed():
        return await asyncio.gather(run(engine, plain), *(run(engine, params(grammar, seed=s)) for s in range(3)))

    beside = asyncio.run(mixed())[0]
    assert beside == alone


def test_a_bad_grammar_fails_its_request_only(grammar_engine):
    engine = grammar_engine
    async def go():
        bad = run(engine, params("start: %json {\"type\": \"array\", \"uniqueItems\": true}"))
        good = run(engine, params(None, temperature=0.0, max_tokens=5))
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(go())
    assert isinstance(bad, SequenceFailed)
    assert isinstance(good, list) and len(good) == 5


@pytest.mark.parametrize("density", [0.02, 0.5, 0.98])
def test_the_bitmask_unpacks_token_by_token(density):
    import numpy as np

    from gptoss.engine.grammar import forbidden_mask

    vocab, words = 150, 5
    rng = np.random.default_rng(int(density * 100))
    bits = rng.random((2, words * 32)) < density
    packed = (bits.reshape(2, words, 32).astype(np.int64) << np.arange(32)).sum(-1)
    packed = np.where(packed >= 2**31, packed - 2**32, packed).astype(np.int32)
    forbidden = forbidden_mask(packed, vocab)
    assert forbidden.shape == (2, vocab)
    for row in range(2):
        for token in range(vocab):
            assert bool(forbidden[row, token]) == (not bits[row, token])


def test_a_reused_bitmask_row_is_overwritten_not_merged():
    """The engine reuses one bitmask buffer step to step: a fill must replace the row's old bits."""
    import llguidance
    import torch

    from gptoss.engine.grammar import Grammars

    grammars = Grammars(grammar_tokenizer())
    free = grammars.matcher(harmony_grammar(AnswerSpec(reasoning_budget=50)))
    strict = grammars.matcher('start: "x" <|return|>')
    buffer = grammars.bitmask(1)
    grammars.fill(free, buffer, 0)
    grammars.fill(strict, buffer, 0)
    fresh = llguidance.torch.allocate_token_bitmask(1, grammars.vocab)
    grammars.fill(grammars.matcher('start: "x" <|return|>'), fresh, 0)
    assert torch.equal(buffer, fresh)

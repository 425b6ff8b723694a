"""The Harmony grammars of structured output: what they accept and what they refuse, token by token."""

from __future__ import annotations

import llguidance
import pytest

from gptoss.harmony.grammar import (
    AnswerSpec,
    GrammarError,
    ToolSpec,
    check_grammar,
    document_grammar,
    grammar_tokenizer,
    harmony_grammar,
)
from gptoss.harmony.vocab import text_encoding

SCHEMA = {"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"], "additionalProperties": False}


def accepts(grammar: str, text: str) -> bool:
    """Whether the whole of ``text`` (specials included) is a complete sentence of ``grammar``."""
    matcher = llguidance.LLMatcher(grammar_tokenizer(), llguidance.LLMatcher.grammar_from_lark(grammar))
    for token in text_encoding().encode(text, allowed_special="all"):
        if not matcher.consume_token(token):
            return False
    return matcher.is_accepting() or matcher.is_stopped()


FINAL = "<|channel|>final<|message|>"
THINK = "<|channel|>analysis<|message|>hmm, let me see<|end|><|start|>assistant"


def test_json_answer_after_free_reasoning():
    g = harmony_grammar(AnswerSpec(json_schema=SCHEMA))
    assert accepts(g, THINK + FINAL + '{"a":1}<|return|>')
    assert accepts(g, FINAL + '{"a":2}<|return|>')  # reasoning is optional
    assert not accepts(g, THINK + FINAL + '{"a":3}<|return|>')  # not in the enum
    assert not accepts(g, THINK + FINAL + '{"a":1,"b":1}<|return|>')  # additionalProperties
    assert not accepts(g, THINK + "<|channel|>commentary<|message|>x<|end|>")  # no other channel
    assert not accepts(g, '{"a":1}<|return|>')  # the Harmony framing is required


def test_reasoning_budget_bounds_the_analysis_only():
    g = harmony_grammar(AnswerSpec(reasoning_budget=3))
    long = "<|channel|>analysis<|message|>" + " word" * 10 + "<|end|><|start|>assistant"
    assert not accepts(g, long + FINAL + "hi<|return|>")
    assert accepts(g, "<|channel|>analysis<|message|> a b<|end|><|start|>assistant" + FINAL + "hi" * 20 + "<|return|>")


def test_tool_calls_name_a_tool_and_strict_arguments_follow_the_schema():
    tools = [ToolSpec("get", SCHEMA, strict=True), ToolSpec("put", None)]
    g = harmony_grammar(AnswerSpec(tools=tools))
    call = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{}<|call|>"
    assert accepts(g, THINK + call.format("get", '{"a":1}'))
    assert not accepts(g, THINK + call.format("get", '{"a":"x"}'))
    assert accepts(g, THINK + call.format("put", '{"anything":[1]}'))
    assert not accepts(g, THINK + call.format("delete", "{}"))  # not one of the tools
    assert not accepts(g, THINK + call.format("put", "not json"))
    assert accepts(g, THINK + FINAL + "text<|return|>")  # auto: a text answer is fine


def test_tool_choice_none_allows_no_call_and_required_only_calls():
    tools = [ToolSpec("get", None)]
    call = THINK + "<|channel|>commentary to=functions.get <|constrain|>json<|message|>{}<|call|>"
    assert not accepts(harmony_grammar(AnswerSpec(tools=tools, calls="none")), call)
    assert accepts(harmony_grammar(AnswerSpec(tools=tools, calls="none")), THINK + FINAL + "ok<|return|>")
    assert not accepts(harmony_grammar(AnswerSpec(tools=tools, calls="required")), THINK + FINAL + "ok<|return|>")
    # after render.py's prefill for "required" the grammar picks the name; for a named choice, the arguments
    assert accepts(harmony_grammar(AnswerSpec(tools=tools), prefill="required"), ".get <|constrain|>json<|message|>{}<|call|>")
    assert accepts(harmony_grammar(AnswerSpec(tools=tools), prefill="named"), "{}<|call|>")


def test_a_document_grammar_is_one_json_value_then_return():
    g = document_grammar(SCHEMA)
    assert accepts(g, '{"a":2}<|return|>') and not accepts(g, '{"a":2} more<|return|>')
    assert accepts(document_grammar(None), '{"x":{"y":[true,null]}}<|return|>')


@pytest.mark.parametrize("keyword", ["uniqueItems", "not", "dependentRequired"])
def test_unsupported_keywords_are_named(keyword):
    schema = {"type": "array", "uniqueItems": True} if keyword == "uniqueItems" else (
        {"not": {"type": "string"}} if keyword == "not" else {"type": "object", "dependentRequired": {"a": ["b"]}}
    )
    with pytest.raises(GrammarError) as info:
        check_grammar(document_grammar(schema))
    assert info.value.keyword == keyword

"""Grammars that keep gpt-oss's answer in shape: Harmony's structure, with JSON only where the answer is.

A request that asks for structured output (a JSON ``response_format``, tools, a forced
``tool_choice``) or for a reasoning budget is decoded under a grammar that covers the whole
assistant turn, written in llguidance's Lark syntax with Harmony's special tokens:

* the ``analysis`` message is free text (the model reasons as it was trained to), bounded by
  the reasoning budget when there is one: at the budget, the grammar allows only ``<|end|>``, so
  the analysis closes and the answer opens;
* the Harmony framing between messages (``<|end|><|start|>assistant<|channel|>final<|message|>``)
  has one spelling, so the model cannot wander into another channel;
* the ``final`` message is the JSON the request asks for, or free text; a tool call's name is one
  of the request's tools and its arguments are JSON (valid against ``parameters`` when ``strict``).

Other serving stacks apply a JSON grammar from the first generated token, which leaves gpt-oss no
room for its reasoning channel. Here the constraint starts where the answer starts, because the
grammar knows the channels.

The engine only sees the grammar text (``SamplingParams.grammar``) and applies it token by token.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: Compact JSON (no free whitespace between tokens): what gpt-oss writes, and a finite language
#: for schemas with bounded strings, so even a random-weight model ends its answer.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class GrammarError(ValueError):
    """A schema the grammar library cannot enforce; ``keyword`` names what it lacks, when known."""

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``schema`` is enforced on its arguments when ``strict``."""

    name: str
    parameters: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class AnswerSpec:
    """What a request allows the assistant turn to end with.

    ``text``: free text (None), a JSON object (``{}``), or JSON valid against a schema. ``tools``
    may be called when ``calls`` is ``auto``; ``required`` allows only a call, ``none`` none.
    """

    json_schema: dict[str, Any] | None = None
    json_any_object: bool = False
    tools: Sequence[ToolSpec] = ()
    calls: Literal["auto", "required", "none"] = "auto"
    reasoning_budget: int | None = None  # tokens of the analysis message (None = unbounded)


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_OPTIONS}, separators=(",", ":"))


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a Lark string literal is a JSON string literal


def _call_rules(tools: Sequence[ToolSpec]) -> list[str]:
    """``call_i``: the rest of a call header after ``to=functions``, the arguments, ``<|call|>``."""
    rules = ["call: " + " | ".join(f"call_{i}" for i in range(len(tools)))]
    for i, tool in enumerate(tools):
        args = tool.parameters if tool.strict and tool.parameters else _ANY_OBJECT
        rules.append(
            f'call_{i}: {_lark_string("." + tool.name + " ")} <|constrain|> "json" <|message|> args_{i} <|call|>'
        )
        rules.append(f"args_{i}: {_json_rule(args)}")
    return rules


def harmony_grammar(spec: AnswerSpec, *, prefill: Literal["", "required", "named"] = "") -> str:
    """The Lark grammar of the assistant turn ``spec`` allows, from the first generated token.

    ``prefill``: what the prompt already ends with (render.py's forced tool-call headers):
    ``required`` the header up to ``to=functions`` (the grammar picks the name), ``named`` the
    whole header of the one allowed call (the grammar holds its arguments).
    """
    tools = list(spec.tools) if spec.calls != "none" else []
    if prefill == "named":
        if len(tools) != 1:
            raise ValueError("a named tool_choice grammar needs exactly that one tool")
        tool = tools[0]
        args = tool.parameters if tool.strict and tool.parameters else _ANY_OBJECT
        return f"start: args <|call|>\nargs: {_json_rule(args)}\n"
    if prefill == "required":
        return (
            "start: "
            + " | ".join(f"call_{i}" for i in range(len(tools)))
            + "\n"
            + "\n".join(_call_rules(tools)[1:])
            + "\n"
        )
    budget = f"[max_tokens={spec.reasoning_budget}]" if spec.reasoning_budget else ""
    if spec.json_schema is not None:
        body = _json_rule(spec.json_schema)
    elif spec.json_any_object:
        body = _json_rule(_ANY_OBJECT)
    else:
        body = "TEXT"
    rules = [
        'analysis: <|channel|> "analysis" <|message|> thought <|end|> <|start|> "assistant"',
        f"thought{budget}: /(.|\\n)*/",
        f'final: <|channel|> "final" <|message|> body <|return|>\nbody: {body}',
        "TEXT: /(.|\\n)*/",
    ]
    if spec.calls == "required" and tools:
        answer = 'preamble? <|channel|> "commentary to=functions" call'
    elif tools:
        answer = 'final | preamble? <|channel|> "commentary to=functions" call'
    else:
        answer = "final"
    if tools:
        rules.append('preamble: <|channel|> "commentary" <|message|> TEXT <|end|> <|start|> "assistant"')
        rules += _call_rules(tools)
    return f"start: analysis? answer\nanswer: {answer}\n" + "\n".join(rules) + "\n"


def document_grammar(schema: dict[str, Any] | None) -> str:
    """Raw text (``/v1/completions``, no Harmony) that is one JSON document: ``schema``, or any
    object when None, then ``<|return|>``, a stop token of raw completions."""
    return f"start: body <|return|>\nbody: {_json_rule(schema if schema is not None else _ANY_OBJECT)}\n"


@functools.lru_cache(maxsize=1)
def grammar_tokenizer() -> Any:
    """The Harmony vocabulary as llguidance takes it (built once: about a second)."""
    import llguidance.tiktoken
    import tiktoken

    from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE, text_encoding

    enc = text_encoding()
    # o200k_harmony names one special token past the model's vocabulary; the model never emits it.
    specials = {k: v for k, v in enc._special_tokens.items() if v < HARMONY_VOCAB_SIZE}
    inside = tiktoken.Encoding(
        "o200k_harmony_model", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks, special_tokens=specials
    )
    return llguidance.tiktoken.lltokenizer_from_encoding(
        inside, n_vocab=HARMONY_VOCAB_SIZE, eos_token=specials["<|return|>"]
    )


_UNIMPLEMENTED = "Unimplemented keys: "


@functools.lru_cache(maxsize=256)
def check_grammar(grammar: str) -> None:
    """Raise :class:`GrammarError` when llguidance cannot enforce ``grammar`` (cached: schemas repeat)."""
    import llguidance

    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.LLMatcher.grammar_from_lark(grammar), grammar_tokenizer()
    )
    if not failed:
        return
    message = messages[0] if messages else "the grammar is invalid"
    keyword = None
    if _UNIMPLEMENTED in message:
        listed = message.split(_UNIMPLEMENTED, 1)[1].split("]", 1)[0] + "]"
        try:
            names = json.loads(listed)
            keyword = names[0] if names else None
        except ValueError:
            keyword = None
    first_line = message.split("\n", 1)[0]
    if "failed to compile JSON schema: " in first_line:
        first_line = first_line.split("failed to compile JSON schema: ", 1)[1]
    raise GrammarError(first_line, keyword)

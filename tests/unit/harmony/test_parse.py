"""Parsing the model's Harmony output token by token into OpenAI deltas, and the RAW fallback."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import pytest
from openai_harmony import Role, StreamableParser

from gptoss.harmony import ChatStreamParser, Delta, token_bytes
from gptoss.harmony import parse as parse_module
from gptoss.harmony.parse import MAX_HEADER_TOKENS
from gptoss.harmony.render import named_tool_prefill
from gptoss.harmony.vocab import load_encoding

LOGGER = "gptoss.harmony.parse"
TOOL_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'


@pytest.fixture(scope="module")
def enc():
    return load_encoding()


def toks(enc, s: str) -> list[int]:
    return enc.encode(s, allowed_special="all")


@pytest.fixture(autouse=True)
def counted_ids(monkeypatch):
    """Tool call ids call_0, call_1... (a fresh count per test)."""
    n = iter(range(1000))
    monkeypatch.setattr(parse_module, "_new_tool_call_id", lambda: f"call_{next(n)}")


@dataclass
class ParsedToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ParsedMessage:
    content: str | None
    reasoning: str | None
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


def run(enc, s: str | list[int], finish: str | None = "stop"):
    """Feed a completion token by token; return (parser, all deltas)."""
    ids = toks(enc, s) if isinstance(s, str) else s
    parser = ChatStreamParser(enc)
    deltas: list[Delta] = []
    for t in ids:
        deltas.extend(parser.feed(t))
    deltas.extend(parser.finish(finish))
    return parser, deltas


def aggregate(deltas: list[Delta]) -> ParsedMessage:
    """What a client reconstructs from the deltas (a non-streaming response folds the same ones)."""
    content = "".join(d.text for d in deltas if d.kind == "content")
    reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
    calls: list[ParsedToolCall] = []
    for d in deltas:
        if d.kind == "tool_call_start":
            assert d.tool_index == len(calls)
            calls.append(ParsedToolCall(d.tool_id or "", d.tool_name or "", ""))
        elif d.kind == "tool_call_args":
            calls[d.tool_index].arguments += d.text
    has_content = any(d.kind == "content" for d in deltas)
    has_reasoning = any(d.kind == "reasoning" for d in deltas)
    return ParsedMessage(content if has_content else None, reasoning if has_reasoning else None, calls)


# ---------------------------------------------------------------------------------------------
# Parsing valid Harmony
# ---------------------------------------------------------------------------------------------


def test_reasoning_then_final(enc, caplog):
    s = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>"
    with caplog.at_level(logging.WARNING, LOGGER):
        parser, deltas = run(enc, s)
    assert aggregate(deltas) == ParsedMessage(content="Hi!", reasoning="think", tool_calls=[])
    assert parser.finish_reason == "stop"
    # analysis header (3) + "think" + <|end|>
    assert parser.reasoning_token_count == 5
    ids = toks(enc, s)
    for d in deltas:  # each delta points at the generated token that carries its text
        assert enc.decode([ids[d.token_index]]) in d.text
    assert not caplog.records


def test_tool_call(enc):
    parser, deltas = run(enc, TOOL_CALL)
    assert aggregate(deltas) == ParsedMessage(None, None, [ParsedToolCall("call_0", "get_weather", '{"city":"Paris"}')])
    assert deltas[0] == Delta("tool_call_start", tool_index=0, tool_id="call_0", tool_name="get_weather", token_index=11)
    assert all(d.kind == "tool_call_args" and d.tool_index == 0 for d in deltas[1:])
    assert parser.finish_reason == "tool_calls"
    assert parser.reasoning_token_count == 0


def test_default_tool_call_ids_are_unique(enc, monkeypatch):
    monkeypatch.undo()  # the real ids
    ids = set()
    for _ in range(3):
        _, deltas = run(enc, TOOL_CALL)
        (call,) = aggregate(deltas).tool_calls
        assert call.id.startswith("call_") and len(call.id) > 10
        ids.add(call.id)
    assert len(ids) == 3


def test_reasoning_then_tool_call(enc):
    s = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant" + TOOL_CALL
    parser, deltas = run(enc, s)
    assert aggregate(deltas) == ParsedMessage(
        None, "Need weather.", [ParsedToolCall("call_0", "get_weather", '{"city":"Paris"}')]
    )
    assert parser.finish_reason == "tool_calls"
    assert parser.reasoning_token_count == len(toks(enc, "<|channel|>analysis<|message|>Need weather.<|end|>"))


def test_preamble_then_tool_call_with_recipient_in_role(enc):
    # the form harmony itself renders for history: recipient before the channel
    s = (
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city":"Rome"}<|call|>'
    )
    parser, deltas = run(enc, s)
    assert aggregate(deltas) == ParsedMessage(
        "Let me check.", None, [ParsedToolCall("call_0", "get_weather", '{"city":"Rome"}')]
    )
    assert parser.finish_reason == "tool_calls"


def test_tool_call_without_constrain(enc):
    _, deltas = run(enc, "<|channel|>commentary to=functions.f json<|message|>{}<|call|>")
    assert aggregate(deltas).tool_calls == [ParsedToolCall("call_0", "f", "{}")]


def test_tokens_after_the_end_are_ignored(enc):
    parser, deltas = run(enc, "<|channel|>final<|message|>ok<|return|>more text")
    assert aggregate(deltas).content == "ok"
    assert parser.finish_reason == "stop"


def test_length_inside_final(enc):
    parser, deltas = run(enc, "<|channel|>final<|message|>Hello wor", finish="length")
    assert aggregate(deltas).content == "Hello wor"
    assert parser.finish_reason == "length"


def test_tool_call_cut_by_length_is_length(enc):
    parser, deltas = run(enc, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":', finish="length")
    assert aggregate(deltas).tool_calls[0].arguments == '{"a":'
    assert parser.finish_reason == "length"


def test_tool_call_ended_without_call_token_is_tool_calls(enc):
    # the engine stopped (not for length) inside complete arguments: still a tool call
    parser, _ = run(enc, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":1}', finish="stop")
    assert parser.finish_reason == "tool_calls"
    assert parser.finish("length") == [] and parser.finish_reason == "tool_calls"  # finish is once-only


def test_tool_call_then_final_is_stop(enc):
    s = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|end|><|start|>assistant<|channel|>final<|message|>done<|return|>"
    parser, deltas = run(enc, s)
    assert aggregate(deltas).content == "done" and len(aggregate(deltas).tool_calls) == 1
    assert parser.finish_reason == "stop"


def test_two_tool_calls_get_indices(enc):
    s = (
        "<|channel|>commentary to=functions.a <|constrain|>json<|message|>{}<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.b <|constrain|>json<|message|>{}<|call|>"
    )
    parser, deltas = run(enc, s)
    starts = [(d.tool_index, d.tool_name, d.tool_id) for d in deltas if d.kind == "tool_call_start"]
    assert starts == [(0, "a", "call_0"), (1, "b", "call_1")]
    assert parser.finish_reason == "tool_calls"


def test_truncated_valid_header_is_dropped(enc, caplog):
    # A valid header cut by max_tokens has no text for the client: nothing leaks, no warning.
    s = "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>fin"
    with caplog.at_level(logging.WARNING, LOGGER):
        parser, deltas = run(enc, s, finish="length")
    assert aggregate(deltas) == ParsedMessage(None, "x", [])
    assert parser.finish_reason == "length"
    assert not caplog.records


@pytest.mark.parametrize(
    "text",
    ["é", "日本語のテキスト", "emoji 🤖🦩✨ done", "math 𝔘𝔫𝔦 and 𠜎"],
)
def test_multibyte_text_is_never_split(enc, text):
    s = f"<|channel|>analysis<|message|>{text}<|end|><|start|>assistant<|channel|>final<|message|>{text}<|return|>"
    parser, deltas = run(enc, s)
    assert all("\ufffd" not in d.text for d in deltas)
    assert aggregate(deltas) == ParsedMessage(text, text, [])


def test_multibyte_fixture_really_splits_characters(enc):
    ids = toks(enc, "🦩 𠜎")
    bad = []
    for t in ids:
        try:
            token_bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            bad.append(t)
    assert bad, "the test string must contain tokens that end mid-character"


def test_harmony_streamable_parser_holds_back_partial_utf8(enc):
    """Documents harmony's own behaviour that our decoder mirrors."""
    p = StreamableParser(enc, Role.ASSISTANT)
    deltas = []
    for t in toks(enc, "<|channel|>final<|message|>🦩"):
        p.process(t)
        deltas.append(p.last_content_delta)
    assert deltas[-1] == "🦩" and deltas[-2] is None


# ---------------------------------------------------------------------------------------------
# Malformed output -> RAW fallback
# ---------------------------------------------------------------------------------------------


def _raw_check(parser: ChatStreamParser, deltas: list[Delta], caplog, content: str | None, finish: str = "stop"):
    assert aggregate(deltas) == ParsedMessage(content, None, [])
    assert all(d.kind == "content" for d in deltas)
    assert "<|" not in (content or "")
    assert parser.finish_reason == finish
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1 and "not valid Harmony" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "s, content",
    [
        ("Hello there, no header at all", "Hello there, no header at all"),
        ("<|message|>hi<|end|>", "hi"),  # no channel
        ("<|return|>", None),  # stop token without a channel
        ("<|channel|>final<|return|>", "final"),  # stop token inside the header
        ("<|channel|>finale<|message|>hi<|end|>", "finalehi"),  # unknown channel
        ("<|channel|>final<|message|>hi<|channel|>there<|end|>", "hithere"),  # stray special in content
        ("<|channel|>final<|message|>a<|start|>b<|return|>", "ab"),
        ("<|channel|>analysis<|message|>a<|end|>b c", "b c"),  # no <|start|> after <|end|>
        ("<|channel|>final<|message|>a<|end|><|start|>user<|message|>b<|end|>", "auserb"),  # not assistant
        ("<|start|>assistant<|channel|>final<|message|>x<|end|>", "assistantfinalx"),  # role repeated
        ("<|channel|>final<|message|>a<|reserved_200013|>b", "ab"),
    ],
)
def test_malformed_output_falls_back_to_raw(enc, caplog, s, content):
    with caplog.at_level(logging.WARNING, LOGGER):
        parser, deltas = run(enc, s)
    # content already emitted in its channel before the break stays where it was
    if s.startswith("<|channel|>final<|message|>"):
        _raw_check(parser, deltas, caplog, content)
    elif s.startswith("<|channel|>analysis"):
        assert aggregate(deltas) == ParsedMessage(content, "a", [])
        assert "not valid Harmony" in caplog.records[0].getMessage()
    else:
        _raw_check(parser, deltas, caplog, content)


def test_harmony_error_falls_back_to_raw(enc, caplog):
    # passes our token-level header check, but harmony refuses two recipients plus a content type
    s = " to=a<|channel|>commentary to=b json<|message|>{}<|call|>"
    # sanity: harmony itself raises on this header
    p = StreamableParser(enc, Role.ASSISTANT)
    with pytest.raises(Exception):  # noqa: B017 (whatever openai-harmony raises for it)
        for t in toks(enc, s):
            p.process(t)
    with caplog.at_level(logging.WARNING, LOGGER):
        parser, deltas = run(enc, s)
    _raw_check(parser, deltas, caplog, " to=acommentary to=b json{}")
    assert "harmony rejected" in caplog.records[0].getMessage()


def test_overlong_header_falls_back_to_raw(enc, caplog):
    name = "functions." + "ab1." * 200
    s = f"<|channel|>commentary to={name} <|constrain|>json<|message|>{{}}<|call|>"
    ids = toks(enc, s)
    with caplog.at_level(logging.WARNING, LOGGER):
        parser = ChatStreamParser(enc)
        outputs = [parser.feed(t) for t in ids]
        outputs.append(parser.finish("stop"))
    # nothing comes out before the limit; everything from then on is streamed as content
    assert not any(outputs[:MAX_HEADER_TOKENS])
    assert outputs[MAX_HEADER_TOKENS]
    deltas = [d for out in outputs for d in out]
    _raw_check(parser, deltas, caplog, f"commentary to={name} json{{}}")


def test_random_tokens_stream_as_content(enc, caplog):
    rng = random.Random(1234)
    ids = [rng.randrange(0, 199998) for _ in range(300)]
    with caplog.at_level(logging.WARNING, LOGGER):
        parser = ChatStreamParser(enc)
        outputs = [parser.feed(t) for t in ids]
        outputs.append(parser.finish("length"))
    deltas = [d for out in outputs for d in out]
    expected = b"".join(token_bytes(t) for t in ids).decode("utf-8", errors="replace")
    _raw_check(parser, deltas, caplog, expected, finish="length")
    # streamed as generated: every token whose bytes are complete text shows up at once
    for i, t in enumerate(ids):
        b = token_bytes(t)
        if b.isascii() and b and (i == 0 or token_bytes(ids[i - 1]).isascii()):
            assert outputs[i] and outputs[i][0].text == b.decode() and outputs[i][0].token_index == i


def test_random_tokens_with_specials_never_leak(enc, caplog):
    rng = random.Random(7)
    specials = toks(enc, "<|start|><|end|><|message|><|channel|><|constrain|><|return|><|call|>")
    for _ in range(20):
        ids = [rng.choice(specials) if rng.random() < 0.3 else rng.randrange(0, 199998) for _ in range(60)]
        parser, deltas = run(enc, ids, finish=rng.choice(["stop", "length", None]))
        text = "".join(d.text for d in deltas)
        assert "<|" not in text
        assert parser.finish_reason in ("stop", "length", "tool_calls")


def test_feed_never_raises_on_bad_ids(enc):
    parser = ChatStreamParser(enc)
    deltas = [d for t in (-5, 10**9, 200005, 10**9) for d in parser.feed(t)]
    deltas += parser.finish("stop")
    assert parser.finish_reason == "stop"
    assert "<|" not in (aggregate(deltas).content or "")


# ---------------------------------------------------------------------------------------------
# Agreement with harmony's own parser
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s",
    [
        "<|channel|>analysis<|message|>Thinking about 日本…<|end|><|start|>assistant<|channel|>final<|message|>Answer 🦩<|return|>",
        "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant" + TOOL_CALL,
        "<|channel|>commentary<|message|>One moment.<|end|><|start|>assistant" + TOOL_CALL,
    ],
)
def test_deltas_agree_with_harmonys_parser(enc, s):
    _, deltas = run(enc, s)
    msgs = enc.parse_messages_from_completion_tokens(toks(enc, s), Role.ASSISTANT)
    final = "".join(m.content[0].text for m in msgs if m.channel in ("final", "commentary") and not m.recipient)
    reasoning = "".join(m.content[0].text for m in msgs if m.channel == "analysis")
    assert (aggregate(deltas).content or "") == final
    assert (aggregate(deltas).reasoning or "") == reasoning


def test_prefill_emits_nothing_by_itself(enc):
    parser = ChatStreamParser(enc, prefill_ids=toks(enc, named_tool_prefill("f")))
    out = parser.finish("length")
    assert [d.kind for d in out] == ["tool_call_start"]
    assert out[0].token_index is None  # no generated token carries it
    assert parser.finish_reason == "length"

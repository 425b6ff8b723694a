"""Token ids -> text: per-token bytes, the UTF-8-safe incremental decoder, stop strings."""

from __future__ import annotations

import pytest

from gptoss.harmony import IncrementalDecoder, StopMatcher, token_bytes, token_text
from gptoss.harmony.vocab import load_encoding


@pytest.fixture(scope="module")
def enc():
    return load_encoding()


def toks(enc, s: str) -> list[int]:
    return enc.encode(s, allowed_special="all")


def test_incremental_decoder_multibyte(enc):
    ids = toks(enc, "a🦩b")
    dec = IncrementalDecoder()
    outs = [dec.push(t) for t in ids]
    assert "".join(outs) + dec.flush() == "a🦩b"
    assert "" in outs  # some token completed no character
    assert all("\ufffd" not in o for o in outs)
    # an unfinished character is released as U+FFFD only at flush
    dec = IncrementalDecoder()
    partial = [t for t in ids if t != ids[-1]][:-1]
    text = "".join(dec.push(t) for t in partial)
    assert text + dec.flush() == "a\ufffd"
    assert dec.flush() == ""  # flushing reset it


def test_incremental_decoder_drops_specials_and_unknown_ids(enc):
    ids = toks(enc, "x<|end|>y")
    dec = IncrementalDecoder()
    assert "".join(dec.push(t) for t in [*ids, -1, 10**9]) == "xy"


def test_token_bytes_and_text(enc):
    (end,) = toks(enc, "<|end|>")
    assert token_bytes(end) == b"<|end|>"
    (hello,) = toks(enc, "hello")
    assert token_bytes(hello) == b"hello" and token_text(hello) == "hello"
    split = next(t for t in toks(enc, "🦩") if token_bytes(t) and not token_bytes(t).isascii())
    assert "\ufffd" in token_text(split)
    assert token_bytes(10**9) == b""
    assert token_bytes(enc.encode("<|reserved_200013|>", allowed_special="all")[0]) == b"<|reserved_200013|>"


def _stream(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out, hit = "", False
    for p in pieces:
        text, hit = matcher.push(p)
        out += text
        if hit:
            break
    if not hit:
        out += matcher.flush()
    return out, hit


def test_stop_matcher_split_across_pushes():
    m = StopMatcher(["STOP"])
    assert m.push("hello ST") == ("hello ", False)  # "ST" held back
    assert m.push("O") == ("", False)
    assert m.push("P and more") == ("", True)
    assert m.push("later") == ("", True)
    assert m.flush() == ""


def test_stop_matcher_false_alarm_is_released():
    m = StopMatcher(["STOP"])
    assert m.push("ST") == ("", False)
    assert m.push("ART") == ("START", False)
    assert m.push("xS") == ("x", False)
    assert m.flush() == "S"


def test_stop_matcher_multiple_stops_earliest_wins():
    assert _stream(StopMatcher(["world", "lo w"]), ["hel", "lo wor", "ld"]) == ("hel", True)
    assert _stream(StopMatcher(["\n\n", "END"]), ["a\n", "b E", "ND c"]) == ("a\nb ", True)


def test_stop_matcher_stop_at_start_and_passthrough():
    assert StopMatcher(["abc"]).push("abcdef") == ("", True)
    assert _stream(StopMatcher([]), ["abc"]) == ("abc", False)
    assert _stream(StopMatcher(["", "x"]), ["abc", "dxe"]) == ("abcd", True)
    assert _stream(StopMatcher(["ab"]), ["a", "a", "c"]) == ("aac", False)

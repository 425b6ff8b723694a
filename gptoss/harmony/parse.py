"""The model's Harmony output -> OpenAI deltas (reasoning, content, tool calls), token by token.

Parsing drives harmony's ``StreamableParser`` token by token and maps channels to OpenAI fields
(``analysis`` -> reasoning, ``final`` and recipient-less ``commentary`` -> content,
``to=functions.X`` -> tool call). The model's output is never text-matched: headers are checked
token by token, and anything that does not follow the Harmony grammar is handed to the client as
plain content (RAW fallback) instead of raising, because a broken or random-weight model must still
produce a visible answer.

Behaviours of openai-harmony 0.0.8 this module works around (see tests):

* ``StreamableParser`` copies stray special tokens (``<|channel|>``, ``<|start|>``...) into message
  content as text, and accepts junk header text as a recipient; we validate headers ourselves.
* History tool calls render as ``<|start|>assistant to=functions.X<|channel|>commentary ...``
  (recipient in the role part), while the model writes ``<|channel|>commentary to=functions.X ...``;
  the parser accepts both.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from openai_harmony import HarmonyEncoding, HarmonyError, Role, StreamableParser

from gptoss.harmony.text import IncrementalDecoder, is_special, token_bytes, token_text

logger = logging.getLogger(__name__)

__all__ = ["MAX_HEADER_TOKENS", "ChatStreamParser", "Delta"]

# A Harmony header is a handful of tokens; anything longer is not Harmony.
MAX_HEADER_TOKENS = 128

_CHANNELS = ("analysis", "commentary", "final")

DeltaKind = Literal["reasoning", "content", "tool_call_start", "tool_call_args"]


@dataclass
class Delta:
    """One piece of output for the client.

    ``tool_call_start`` carries ``tool_index``, ``tool_id`` and ``tool_name``; ``tool_call_args``
    carries ``tool_index`` and a fragment of the JSON arguments. ``token_index`` is the index of the
    generated token (0 = first token after the prompt) that produced the delta, for logprobs.
    """

    kind: DeltaKind
    text: str = ""
    tool_index: int | None = None
    tool_id: str | None = None
    tool_name: str | None = None
    token_index: int | None = None


def _new_tool_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@functools.lru_cache(maxsize=4)
def _ids(encoding: HarmonyEncoding) -> dict[str, int]:
    names = ("start", "end", "message", "channel", "constrain", "return", "call")
    return {n: encoding.encode(f"<|{n}|>", allowed_special="all")[0] for n in names}


_RECIPIENT_PART = re.compile(r" to=[^\s<]*")
_RECIPIENT_DONE = re.compile(r" to=[^\s<]+")
_CHANNEL_REST_PART = re.compile(r"(?: to=[^\s<]*)?(?: [\w.+/-]*)?")
_CHANNEL_REST_DONE = re.compile(r"(?: to=[^\s<]+)?(?: [\w.+/-]*)?")
_CTYPE_PART = re.compile(r"[\w.+/-]*")
_CTYPE_DONE = re.compile(r"[\w.+/-]+")


def _role_segment_ok(text: str, first: bool, open_: bool) -> bool:
    """Text before the first header special: ``[assistant][ to=RECIPIENT]``."""
    if not first:
        if open_ and "assistant".startswith(text):
            return True
        if not text.startswith("assistant"):
            return False
        text = text[len("assistant") :]
    if not text:
        return True
    if open_:
        return " to=".startswith(text) or bool(_RECIPIENT_PART.fullmatch(text))
    return bool(_RECIPIENT_DONE.fullmatch(text))


def _channel_segment_ok(text: str, open_: bool) -> bool:
    """Text after ``<|channel|>``: ``CHANNEL[ to=RECIPIENT][ CONTENT_TYPE]``."""
    for channel in _CHANNELS:
        if text.startswith(channel):
            rest = text[len(channel) :]
            return bool((_CHANNEL_REST_PART if open_ else _CHANNEL_REST_DONE).fullmatch(rest))
    return open_ and any(c.startswith(text) for c in _CHANNELS)


def _header_ok(segments: list[str], specials: list[str], first: bool, complete: bool) -> bool:
    """Whether the header so far can still be (or, when complete, is) a valid Harmony header.

    Grammar: ``[assistant][ to=R]<|channel|>CHANNEL[ to=R][ T][<|constrain|>T]<|message|>``.
    Checking this token by token is what lets random output fall back to raw text immediately.
    """
    order = specials[:-1] if complete else specials
    if order and order[0] != "<|channel|>":
        return False
    if len(order) > 1 and order[1:] != ["<|constrain|>"]:
        return False
    if complete and not order:
        return False  # a channel is required for every message
    checks = [
        lambda t, o: _role_segment_ok(t, first, o),
        _channel_segment_ok,
        lambda t, o: bool((_CTYPE_PART if o else _CTYPE_DONE).fullmatch(t)),
    ]
    return all(checks[k](text, (not complete) and k == len(order)) for k, text in enumerate(segments[: len(order) + 1]))


_EXPECT_START, _HEADER, _CONTENT, _DONE, _RAW = "expect_start", "header", "content", "done", "raw"


class ChatStreamParser:
    """Maps generated Harmony tokens to OpenAI deltas; used for both streaming and non-streaming.

    ``feed`` every generated token, then call ``finish`` once. Neither ever raises: output that is
    not valid Harmony is returned as plain content (RAW fallback, one warning logged).

    ``reasoning_token_count`` counts generated tokens of analysis messages, headers and their
    closing ``<|end|>`` included (what the model spent on reasoning).
    """

    def __init__(
        self,
        encoding: HarmonyEncoding,
        *,
        prefill_ids: Sequence[int] = (),
    ) -> None:
        self._tok = _ids(encoding)
        self._stop_ids = {self._tok["end"], self._tok["return"], self._tok["call"]}
        self._parser: StreamableParser | None = StreamableParser(encoding, Role.ASSISTANT)
        self._decoder = IncrementalDecoder()
        self._state = _HEADER
        self._first = True
        self._reset_header()
        self._kind: str | None = None
        self._tool_index: int | None = None
        self._tool_count = 0
        self._reasoning_tokens = 0
        self._generated = 0
        self._last_message_tool = False
        self._finish_reason: str | None = None
        self._finished = False
        self._raw_reason: str | None = None
        self._pending: list[Delta] = []
        try:
            for token in prefill_ids:
                self._pending.extend(self._step(int(token), None))
        except Exception:  # a bad prefill is our bug, but it must not break the request
            logger.exception("could not apply the Harmony prefill")
            self._pending.extend(self._fail(-1, None, "prefill failed"))

    # -- public API ----------------------------------------------------------------------------

    def feed(self, token_id: int) -> list[Delta]:
        """Consume one generated token; return the deltas it produces (often none)."""
        index = self._generated
        self._generated += 1
        out, self._pending = self._pending, []
        for delta in out:
            delta.token_index = index
        try:
            out.extend(self._step(int(token_id), index))
        except Exception:  # never let a parser problem kill the response
            logger.exception("unexpected error while parsing Harmony output")
            try:
                out.extend(self._fail(int(token_id), index, "internal parser error"))
            except Exception:
                self._state = _RAW
        return out

    def finish(self, engine_finish_reason: str | None = None) -> list[Delta]:
        """Flush held-back text and settle ``finish_reason``; call once, after the last token."""
        if self._finished:
            return []
        self._finished = True
        out, self._pending = self._pending, []
        in_tool = False
        try:
            if self._state == _HEADER and self._header_gen:
                # A valid but unfinished header (cut by max_tokens): it carries no text for the client.
                logger.debug("generation ended inside a Harmony header (%s)", engine_finish_reason)
            elif self._state == _CONTENT:
                in_tool = self._kind == "tool"
                out.extend(self._emit(self._decoder.flush(), self._generated - 1 if self._generated else None))
            elif self._state == _RAW:
                out.extend(self._emit(self._decoder.flush(), self._generated - 1 if self._generated else None))
        except Exception:
            logger.exception("unexpected error while finishing Harmony output")
        if self._state == _RAW:
            reason = "length" if engine_finish_reason == "length" else "stop"
        elif in_tool:  # ended inside a call's arguments: complete unless max_tokens cut it
            reason = "length" if engine_finish_reason == "length" else "tool_calls"
        elif self._last_message_tool:  # the last complete message was a call (normally ended by <|call|>)
            reason = "tool_calls"
        elif engine_finish_reason == "length":
            reason = "length"
        else:
            reason = "stop"
        self._finish_reason = reason
        return out

    @property
    def finish_reason(self) -> str | None:
        """"tool_calls", "length" or "stop"; None until ``finish`` is called."""
        return self._finish_reason

    @property
    def reasoning_token_count(self) -> int:
        return self._reasoning_tokens

    # -- state machine -------------------------------------------------------------------------

    def _reset_header(self) -> None:
        self._segments: list[str] = [""]
        self._specials: list[str] = []
        self._header_len = 0
        self._header_gen: list[int] = []  # generated header tokens, for the raw fallback and counting

    def _feed_parser(self, token: int) -> None:
        if self._parser is not None:
            self._parser.process(token)

    def _step(self, token: int, index: int | None) -> list[Delta]:
        state = self._state
        if state == _DONE:
            logger.debug("token %d after the end of the Harmony completion ignored", token)
            return []
        if state == _RAW:
            return self._emit(self._decoder.push(token), index)
        if state == _EXPECT_START:
            if token != self._tok["start"]:
                return self._fail(token, index, "expected <|start|> after the end of a message")
            try:
                self._feed_parser(token)
            except HarmonyError as exc:
                return self._fail(token, index, f"harmony rejected <|start|>: {exc}")
            self._state = _HEADER
            self._reset_header()
            self._header_len = 1
            if index is not None:
                self._header_gen.append(token)
            return []
        if state == _HEADER:
            return self._header_token(token, index)
        return self._content_token(token, index)

    def _header_token(self, token: int, index: int | None) -> list[Delta]:
        self._header_len += 1
        if index is not None:
            self._header_gen.append(token)
        if is_special(token):
            name = token_bytes(token).decode()
            if name not in ("<|channel|>", "<|constrain|>", "<|message|>"):
                return self._fail(token, index, f"unexpected {name} in a message header")
            self._specials.append(name)
            self._segments.append("")
        else:
            self._segments[-1] += token_text(token)
        if self._header_len > MAX_HEADER_TOKENS:
            return self._fail(token, index, f"message header longer than {MAX_HEADER_TOKENS} tokens")
        complete = token == self._tok["message"]
        if not _header_ok(self._segments, self._specials, self._first, complete):
            return self._fail(token, index, "malformed message header")
        try:
            self._feed_parser(token)
        except HarmonyError as exc:
            return self._fail(token, index, f"harmony rejected the header: {exc}")
        if complete:
            return self._begin_content(token, index)
        return []

    def _begin_content(self, token: int, index: int | None) -> list[Delta]:
        parser = self._parser
        assert parser is not None
        channel, recipient = parser.current_channel, parser.current_recipient
        if parser.current_role != Role.ASSISTANT or channel not in _CHANNELS:
            return self._fail(token, index, f"unexpected role/channel {parser.current_role}/{channel}")
        out: list[Delta] = []
        self._last_message_tool = False
        if recipient and recipient != "assistant":
            name = recipient[len("functions.") :] if recipient.startswith("functions.") else recipient
            if not name:
                return self._fail(token, index, "tool call without a function name")
            self._kind = "tool"
            self._tool_index = self._tool_count
            self._tool_count += 1
            out.append(
                Delta(
                    "tool_call_start",
                    tool_index=self._tool_index,
                    tool_id=_new_tool_call_id(),
                    tool_name=name,
                    token_index=index,
                )
            )
        elif channel == "analysis":
            self._kind = "reasoning"
            self._reasoning_tokens += len(self._header_gen)
        else:  # final answer, or a commentary preamble addressed to the user
            self._kind = "content"
        self._state = _CONTENT
        self._reset_header()
        return out

    def _content_token(self, token: int, index: int | None) -> list[Delta]:
        if token in self._stop_ids:
            try:
                self._feed_parser(token)
            except Exception:  # the message is complete for us; harmony's view no longer matters
                self._parser = None
            out = self._emit(self._decoder.flush(), index)
            if self._kind == "reasoning" and index is not None:
                self._reasoning_tokens += 1
            self._last_message_tool = self._kind == "tool"
            self._kind = None
            if token == self._tok["end"]:
                self._state = _EXPECT_START
                self._first = False
            else:
                self._state = _DONE
            return out
        if is_special(token):
            name = token_bytes(token).decode(errors="replace") or str(token)
            return self._fail(token, index, f"unexpected {name} inside a message")
        try:
            self._feed_parser(token)
        except HarmonyError as exc:
            return self._fail(token, index, f"harmony rejected the message: {exc}")
        if self._kind == "reasoning" and index is not None:
            self._reasoning_tokens += 1
        return self._emit(self._decoder.push(token), index)

    def _fail(self, token: int, index: int | None, reason: str) -> list[Delta]:
        """Switch to RAW: what the model generated since this message began goes out as content."""
        if self._raw_reason is None:
            logger.warning("model output is not valid Harmony (%s); passing it through as plain content", reason)
            self._raw_reason = reason
        previous = self._state
        self._state = _RAW
        self._kind = "content"
        self._parser = None
        if previous == _HEADER:
            text = "".join(self._decoder.push(t) for t in self._header_gen)
        elif token >= 0:
            text = self._decoder.push(token)
        else:
            text = ""
        self._reset_header()
        return self._emit(text, index)

    def _emit(self, text: str, index: int | None) -> list[Delta]:
        if not text:
            return []
        if self._kind == "reasoning":
            return [Delta("reasoning", text, token_index=index)]
        if self._kind == "tool":
            return [Delta("tool_call_args", text, tool_index=self._tool_index, token_index=index)]
        return [Delta("content", text, token_index=index)]

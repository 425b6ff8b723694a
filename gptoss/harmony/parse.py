"""OpenAI chat data <-> Harmony tokens for gpt-oss, without torch or FastAPI.

Rendering builds a Harmony ``Conversation`` with ``openai-harmony`` and lets it produce the prompt
tokens; parsing drives harmony's ``StreamableParser`` token by token and maps channels to OpenAI
fields (``analysis`` -> reasoning, ``final`` and recipient-less ``commentary`` -> content,
``to=functions.X`` -> tool call). The model's output is never text-matched: headers are checked
token by token, and anything that does not follow the Harmony grammar is handed to the client as
plain content (RAW fallback) instead of raising, because a broken or random-weight model must still
produce a visible answer.

Behaviours of openai-harmony 0.0.8 this module works around (see tests):

* ``RenderConversationConfig(auto_drop_analysis=True)`` only drops analysis messages that precede
  the *first* final message, and only if the *last* assistant message is final. We drop analysis
  before the *last* final message ourselves and render with ``auto_drop_analysis=False``.
* ``StreamableParser`` copies stray special tokens (``<|channel|>``, ``<|start|>``...) into message
  content as text, and accepts junk header text as a recipient; we validate headers ourselves.
* History tool calls render as ``<|start|>assistant to=functions.X<|channel|>commentary ...``
  (recipient in the role part), while the model writes ``<|channel|>commentary to=functions.X ...``;
  the parser accepts both.
"""

from __future__ import annotations

import base64
import codecs
import datetime as _dt
import functools
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    StreamableParser,
    SystemContent,
    ToolDescription,
)

from gptoss.errors import APIError

logger = logging.getLogger(__name__)

__all__ = [
    "RenderedPrompt",
    "render_chat",
    "render_simple_chat",
    "required_tool_prefill",
    "named_tool_prefill",
    "Delta",
    "ParsedToolCall",
    "ParsedMessage",
    "ChatStreamParser",
    "IncrementalDecoder",
    "StopMatcher",
    "token_bytes",
    "token_text",
    "MAX_HEADER_TOKENS",
]

# A Harmony header is a handful of tokens; anything longer is not Harmony.
MAX_HEADER_TOKENS = 128

_CHANNELS = ("analysis", "commentary", "final")
_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
# OpenAI's own rule for function names; anything else could break the Harmony header.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONSTRAIN_JSON = "<|constrain|>json"


# ---------------------------------------------------------------------------------------------
# Vocabulary helpers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _vocab() -> tuple[tuple[bytes, ...], frozenset[int]]:
    """id -> bytes for the whole vocabulary (special tokens map to their names), and the special ids.

    Harmony does not expose per-token bytes, so the table is read once from the same sha-checked
    ``o200k_base.tiktoken`` that harmony itself loads (``harmony_vocab`` sets the variable).
    """
    from gptoss.harmony.vocab import ENV_VAR, VOCAB_FILE, load_encoding

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


def _is_special(token_id: int) -> bool:
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
    Special tokens are dropped unless ``skip_special=False`` (then their names are emitted).
    """

    def __init__(self, encoding: HarmonyEncoding | None = None, *, skip_special: bool = True) -> None:
        # The encoding is accepted for symmetry with the other helpers; bytes come from the shared table.
        self._skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        _vocab()  # load eagerly so the first token does not pay for it mid-stream

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        if _is_special(token_id):
            if self._skip_special:
                return ""
            held = self._decoder.decode(b"", final=True)
            self._decoder.reset()
            return held + token_bytes(token_id).decode()
        return self._decoder.decode(token_bytes(token_id))

    @property
    def pending(self) -> bool:
        """Whether bytes of an incomplete character are held back."""
        return bool(self._decoder.getstate()[0])

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

    def __init__(self, stops: Sequence[str] | str | None) -> None:
        if isinstance(stops, str):
            stops = [stops]
        self._stops = tuple(s for s in (stops or ()) if s)
        self._buf = ""
        self._hit = False

    @property
    def hit(self) -> bool:
        return self._hit

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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPrompt:
    """Token ids for the engine.

    ``prompt_ids`` already ends with ``prefill_ids`` (the start of the assistant's answer that we
    force, e.g. a tool-call header); the parser must be fed ``prefill_ids`` first so it knows the
    state the model continues from.
    """

    prompt_ids: list[int]
    prefill_ids: list[int]
    stop_token_ids: tuple[int, ...]


def required_tool_prefill() -> str:
    """Prefill for ``tool_choice="required"``: the model only chooses the function name.

    It stops at ``functions`` (not ``functions.``) because o200k merges the dot into the name
    (``.get``, ``_weather``), so this is a token-for-token prefix of what the model would write.
    """
    return "<|channel|>commentary to=functions"


def named_tool_prefill(name: str) -> str:
    """Prefill for a named ``tool_choice``: the whole header, the model writes only the arguments."""
    return f"<|channel|>commentary to=functions.{name} {_CONSTRAIN_JSON}<|message|>"


def _bad(message: str, param: str | None) -> APIError:
    return APIError(400, message, param=param)


def _text_of(content: Any, param: str, *, allow_refusal: bool = False) -> str:
    """Flatten OpenAI message content to text; gpt-oss cannot take images, audio or files."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", param)
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and allow_refusal and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind is None or kind == "text":
            raise _bad("content parts must be objects with a 'type' (and 'text' for text parts)", param)
        else:
            raise _bad(f"gpt-oss is a text-only model: content part type {kind!r} is not supported", param)
    return "".join(texts)


def _effort(value: str | None) -> ReasoningEffort:
    if value is None:
        return ReasoningEffort.MEDIUM
    effort = _EFFORTS.get(str(value).lower())
    if effort is None:
        raise _bad(
            f"reasoning_effort must be one of 'low', 'medium', 'high' (got {value!r})", "reasoning_effort"
        )
    return effort


def _tool_descriptions(tools: list[dict] | None) -> list[ToolDescription]:
    out: list[ToolDescription] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"only tools of type 'function' are supported (got {kind!r})", f"tools[{i}].type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad("tool is missing its 'function' object", f"tools[{i}].function")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
            raise _bad(
                f"invalid function name {name!r}: use 1-64 letters, digits, '_' or '-'", f"tools[{i}].function.name"
            )
        if name in seen:
            raise _bad(f"duplicate function name {name!r}", f"tools[{i}].function.name")
        seen.add(name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad("function parameters must be a JSON Schema object", f"tools[{i}].function.parameters")
        out.append(ToolDescription.new(name, fn.get("description") or "", parameters=params))
    return out


def _tool_choice(tool_choice: str | dict | None, names: set[str]) -> tuple[str, str | None]:
    """Normalise tool_choice to (mode, forced name); mode is none|auto|required|named."""
    if tool_choice is None or tool_choice == "auto":
        return "auto", None
    if tool_choice == "none":
        return "none", None
    if tool_choice == "required":
        if not names:
            raise _bad("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        return "required", None
    if isinstance(tool_choice, dict) and tool_choice.get("type", "function") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise _bad(
                "tool_choice must name a function: {'type': 'function', 'function': {'name': ...}}", "tool_choice"
            )
        if name not in names:
            raise _bad(f"tool_choice names function {name!r}, which is not in 'tools'", "tool_choice")
        return "named", name
    raise _bad(f"unsupported tool_choice {tool_choice!r}: use 'none', 'auto', 'required' or a function", "tool_choice")


def _arguments(raw: Any) -> str:
    if raw is None:
        return "{}"
    return raw if isinstance(raw, str) else json.dumps(raw)


def _drop_old_analysis(msgs: list[Message]) -> list[Message]:
    """Drop analysis before the last final answer: earlier turns' chain of thought is not shown again.

    Analysis after the last final message (the current, tool-calling turn) is kept, as Harmony asks.
    """
    last_final = max(
        (i for i, m in enumerate(msgs) if m.author.role == Role.ASSISTANT and m.channel == "final"), default=-1
    )
    return [m for i, m in enumerate(msgs) if not (i < last_final and m.channel == "analysis")]


def render_chat(
    messages: list[dict],
    *,
    encoding: HarmonyEncoding,
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    reasoning_effort: str | None = "medium",
    today: str | None = None,
) -> RenderedPrompt:
    """Render OpenAI chat messages as the Harmony prompt gpt-oss was trained on.

    Client ``system``/``developer`` messages become the developer message's instructions (the
    Harmony system message carries only model identity, dates, reasoning effort and channels).
    Raises ``APIError(400)`` for anything the model cannot take.
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    effort = _effort(reasoning_effort)
    descriptions = _tool_descriptions(tools)
    mode, forced = _tool_choice(tool_choice, {d.name for d in descriptions})

    instructions: list[str] = []
    convo: list[Message] = []
    call_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad("each message must be an object", f"messages[{i}]")
        role = msg.get("role")
        param = f"messages[{i}].content"
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"), param)
            if text:
                instructions.append(text)
        elif role == "user":
            convo.append(Message.from_role_and_content(Role.USER, _text_of(msg.get("content"), param)))
        elif role == "assistant":
            convo.extend(_assistant_messages(msg, i, call_names))
        elif role in ("tool", "function"):
            if role == "tool":
                call_id = msg.get("tool_call_id")
                if not isinstance(call_id, str) or call_id not in call_names:
                    raise _bad(
                        f"tool message answers unknown tool_call_id {call_id!r}: it must match the id of a "
                        "tool call in an earlier assistant message",
                        f"messages[{i}].tool_call_id",
                    )
                name = call_names[call_id]
            else:  # the deprecated function-calling role names the function directly
                name = msg.get("name")
                if not isinstance(name, str) or not name:
                    raise _bad("function message needs a 'name'", f"messages[{i}].name")
            convo.append(
                Message.from_author_and_content(
                    Author.new(Role.TOOL, f"functions.{name}"), _text_of(msg.get("content"), param)
                )
                .with_channel("commentary")
                .with_recipient("assistant")
            )
        else:
            raise _bad(
                f"unsupported message role {role!r}: use system, developer, user, assistant or tool",
                f"messages[{i}].role",
            )

    system = (
        SystemContent.new()
        .with_reasoning_effort(effort)
        .with_conversation_start_date(today or _dt.datetime.now(_dt.UTC).date().isoformat())
    )
    head = [Message.from_role_and_content(Role.SYSTEM, system)]
    developer = DeveloperContent.new()
    has_developer = False
    if instructions:
        developer = developer.with_instructions("\n\n".join(instructions))
        has_developer = True
    if descriptions and mode != "none":
        # Harmony then also tells the model (in the system message) that calls go to commentary.
        developer = developer.with_function_tools(descriptions)
        has_developer = True
    if has_developer:
        head.append(Message.from_role_and_content(Role.DEVELOPER, developer))

    conversation = Conversation.from_messages(head + _drop_old_analysis(convo))
    try:
        prompt = list(
            encoding.render_conversation_for_completion(
                conversation, Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False)
            )
        )
    except (HarmonyError, ValueError, TypeError) as exc:  # e.g. a tool schema harmony cannot render
        raise _bad(f"the conversation cannot be rendered in the Harmony format: {exc}", None) from exc
    prefill_text = {"required": required_tool_prefill(), "named": named_tool_prefill(forced or "")}.get(mode)
    prefill = encoding.encode(prefill_text, allowed_special="all") if prefill_text else []
    return RenderedPrompt(
        prompt_ids=prompt + prefill,
        prefill_ids=prefill,
        stop_token_ids=tuple(encoding.stop_tokens_for_assistant_actions()),
    )


def _assistant_messages(msg: dict, i: int, call_names: dict[str, str]) -> list[Message]:
    """One OpenAI assistant message -> Harmony messages: analysis, then preamble/final, then calls."""
    out: list[Message] = []
    reasoning = msg.get("reasoning_content")
    if reasoning is None:
        reasoning = msg.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise _bad("reasoning must be a string", f"messages[{i}].reasoning_content")
    if reasoning:
        out.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
    text = _text_of(msg.get("content"), f"messages[{i}].content", allow_refusal=True)
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad("tool_calls must be a list", f"messages[{i}].tool_calls")
    if text:
        # Text said next to tool calls is a Harmony preamble (commentary), otherwise the answer.
        out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary" if calls else "final"))
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise _bad("tool call is missing its 'function' object", f"{param}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
            raise _bad(f"invalid function name {name!r}", f"{param}.function.name")
        call_id = call.get("id")
        if isinstance(call_id, str):
            call_names[call_id] = name
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, _arguments(fn.get("arguments")))
            .with_channel("commentary")
            .with_recipient(f"functions.{name}")
            .with_content_type(_CONSTRAIN_JSON)
        )
    return out


def render_simple_chat(text: str, *, encoding: HarmonyEncoding, reasoning_effort: str = "medium") -> RenderedPrompt:
    """A single user message, for BentoML's native generate API."""
    return render_chat([{"role": "user", "content": text}], encoding=encoding, reasoning_effort=reasoning_effort)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

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


@dataclass
class _ToolAcc:
    id: str
    name: str
    args: list[str] = field(default_factory=list)


def _default_tool_call_id() -> str:
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
        tool_call_id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._enc = encoding
        self._tok = _ids(encoding)
        self._stop_ids = {self._tok["end"], self._tok["return"], self._tok["call"]}
        self._parser: StreamableParser | None = StreamableParser(encoding, Role.ASSISTANT)
        self._new_id = tool_call_id_factory or _default_tool_call_id
        self._decoder = IncrementalDecoder(encoding)
        self._state = _HEADER
        self._first = True
        self._reset_header()
        self._kind: str | None = None
        self._tool_index: int | None = None
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tools: list[_ToolAcc] = []
        self._reasoning_tokens = 0
        self._generated = 0
        self._stop_token: int | None = None
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
    def done(self) -> bool:
        """True once ``<|return|>`` or ``<|call|>`` ended the completion (later tokens are ignored)."""
        return self._state == _DONE

    @property
    def is_raw(self) -> bool:
        """True when the output broke the Harmony grammar and is being passed through as content."""
        return self._state == _RAW

    @property
    def reasoning_token_count(self) -> int:
        return self._reasoning_tokens

    @property
    def generated_token_count(self) -> int:
        return self._generated

    def result(self) -> ParsedMessage:
        """Everything emitted so far, aggregated (what a non-streaming response returns)."""
        return ParsedMessage(
            content="".join(self._content) if self._content else None,
            reasoning="".join(self._reasoning) if self._reasoning else None,
            tool_calls=[ParsedToolCall(t.id, t.name, "".join(t.args)) for t in self._tools],
        )

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
        if _is_special(token):
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
            self._tool_index = len(self._tools)
            acc = _ToolAcc(self._new_id(), name)
            self._tools.append(acc)
            out.append(
                Delta("tool_call_start", tool_index=self._tool_index, tool_id=acc.id, tool_name=name, token_index=index)
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
                self._stop_token = token
            return out
        if _is_special(token):
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
        kind = self._kind
        if kind == "reasoning":
            self._reasoning.append(text)
            return [Delta("reasoning", text, token_index=index)]
        if kind == "tool":
            assert self._tool_index is not None
            self._tools[self._tool_index].args.append(text)
            return [Delta("tool_call_args", text, tool_index=self._tool_index, token_index=index)]
        self._content.append(text)
        return [Delta("content", text, token_index=index)]

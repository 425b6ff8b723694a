"""A validated chat request -> the Harmony prompt tokens gpt-oss was trained on.

Rendering builds a Harmony ``Conversation`` with ``openai-harmony`` and lets it produce the
prompt tokens. The input is the caller's already validated request (roles, content parts, tool
names, tool_choice are its business): messages as :class:`Turn` with their text already
flattened, tool calls, tools and tool_choice as anything of the shape declared below (the API's
request models are). Only what Harmony itself cannot take raises
:class:`HarmonyInputError`: a tool result answering no earlier call, a history tool call whose
name cannot go into a Harmony header, a conversation harmony refuses to render.

openai-harmony 0.0.8's ``RenderConversationConfig(auto_drop_analysis=True)`` only drops analysis
messages that precede the *first* final message, and only if the *last* assistant message is
final. We drop analysis before the *last* final message ourselves and render with
``auto_drop_analysis=False`` (see tests).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

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
    SystemContent,
    ToolDescription,
)

__all__ = [
    "ForcedFunction",
    "FunctionTool",
    "HarmonyInputError",
    "PastToolCall",
    "RenderedPrompt",
    "Turn",
    "render_chat",
]

_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
# OpenAI's own rule for function names; anything else could break the Harmony header.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONSTRAIN_JSON = "<|constrain|>json"


class HarmonyInputError(ValueError):
    """The request cannot be put into the Harmony format; ``param`` names the offending field.

    The API answers it as an OpenAI 400 (``invalid_request_error``) with this message, param and code.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# ---------------------------------------------------------------------------------------------
# What rendering needs from the caller's (already validated) request
# ---------------------------------------------------------------------------------------------


class _FunctionCall(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def arguments(self) -> str: ...  # JSON


class PastToolCall(Protocol):
    """A tool call in an earlier assistant message."""

    @property
    def id(self) -> str: ...

    @property
    def function(self) -> _FunctionCall: ...


@dataclass(frozen=True)
class Turn:
    """One chat message, its content already flattened to text by the caller."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    text: str
    reasoning: str | None = None  # assistant: the reasoning returned with it
    tool_calls: Sequence[PastToolCall] = ()  # assistant
    tool_call_id: str | None = None  # tool: the call it answers


class FunctionTool(Protocol):
    """A function the model may call."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str | None: ...

    @property
    def parameters(self) -> dict[str, Any] | None: ...  # JSON Schema


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class ForcedFunction(Protocol):
    """``tool_choice`` forcing one function: ``{"type": "function", "function": {"name": ...}}``."""

    @property
    def function(self) -> _Named: ...


ToolChoice = Literal["none", "auto", "required"] | ForcedFunction


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


def _drop_old_analysis(msgs: list[Message]) -> list[Message]:
    """Drop analysis before the last final answer: earlier turns' chain of thought is not shown again.

    Analysis after the last final message (the current, tool-calling turn) is kept, as Harmony asks.
    """
    last_final = max(
        (i for i, m in enumerate(msgs) if m.author.role == Role.ASSISTANT and m.channel == "final"), default=-1
    )
    return [m for i, m in enumerate(msgs) if not (i < last_final and m.channel == "analysis")]


def render_chat(
    messages: Sequence[Turn],
    *,
    encoding: HarmonyEncoding,
    tools: Sequence[FunctionTool] = (),
    tool_choice: ToolChoice | None = None,
    reasoning_effort: Literal["low", "medium", "high"] = "medium",
    today: str | None = None,
) -> RenderedPrompt:
    """Render a chat conversation as the Harmony prompt gpt-oss was trained on.

    Client ``system``/``developer`` messages become the developer message's instructions (the
    Harmony system message carries only model identity, dates, reasoning effort and channels).
    ``tool_choice`` must name one of ``tools`` (the caller has checked). Raises
    :class:`HarmonyInputError` for anything Harmony cannot take.
    """
    instructions: list[str] = []
    convo: list[Message] = []
    call_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        role = msg.role
        if role in ("system", "developer"):
            if msg.text:
                instructions.append(msg.text)
        elif role == "user":
            convo.append(Message.from_role_and_content(Role.USER, msg.text))
        elif role == "assistant":
            convo.extend(_assistant_messages(msg, i, call_names))
        elif role == "tool":
            call_id = msg.tool_call_id
            if call_id is None or call_id not in call_names:
                raise HarmonyInputError(
                    f"tool message answers unknown tool_call_id {call_id!r}: it must match the id of a "
                    "tool call in an earlier assistant message",
                    f"messages[{i}].tool_call_id",
                )
            convo.append(
                Message.from_author_and_content(
                    Author.new(Role.TOOL, f"functions.{call_names[call_id]}"), msg.text
                )
                .with_channel("commentary")
                .with_recipient("assistant")
            )
        else:
            raise TypeError(f"messages[{i}] has role {role!r}, which the request model should have refused")

    system = (
        SystemContent.new()
        .with_reasoning_effort(_EFFORTS[reasoning_effort])
        .with_conversation_start_date(today or _dt.datetime.now(_dt.UTC).date().isoformat())
    )
    head = [Message.from_role_and_content(Role.SYSTEM, system)]
    developer = DeveloperContent.new()
    has_developer = False
    if instructions:
        developer = developer.with_instructions("\n\n".join(instructions))
        has_developer = True
    if tools and tool_choice != "none":
        # Harmony then also tells the model (in the system message) that calls go to commentary.
        descriptions = [ToolDescription.new(t.name, t.description or "", parameters=t.parameters) for t in tools]
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
        raise HarmonyInputError(f"the conversation cannot be rendered in the Harmony format: {exc}") from exc
    if tool_choice == "required":
        prefill_text = required_tool_prefill()
    elif tool_choice is not None and not isinstance(tool_choice, str):
        prefill_text = named_tool_prefill(tool_choice.function.name)
    else:
        prefill_text = ""
    prefill = encoding.encode(prefill_text, allowed_special="all") if prefill_text else []
    return RenderedPrompt(
        prompt_ids=prompt + prefill,
        prefill_ids=prefill,
        stop_token_ids=tuple(encoding.stop_tokens_for_assistant_actions()),
    )


def _assistant_messages(msg: Turn, i: int, call_names: dict[str, str]) -> list[Message]:
    """One assistant message -> Harmony messages: analysis, then preamble/final, then calls."""
    out: list[Message] = []
    if msg.reasoning:
        out.append(Message.from_role_and_content(Role.ASSISTANT, msg.reasoning).with_channel("analysis"))
    text = msg.text
    calls = msg.tool_calls
    if text:
        # Text said next to tool calls is a Harmony preamble (commentary), otherwise the answer.
        out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary" if calls else "final"))
    for j, call in enumerate(calls):
        name = call.function.name
        if not _TOOL_NAME_RE.match(name):
            raise HarmonyInputError(
                f"invalid function name {name!r}: use 1-64 letters, digits, '_' or '-'",
                f"messages[{i}].tool_calls[{j}].function.name",
            )
        call_names[call.id] = name
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, call.function.arguments)
            .with_channel("commentary")
            .with_recipient(f"functions.{name}")
            .with_content_type(_CONSTRAIN_JSON)
        )
    return out

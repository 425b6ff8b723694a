"""Responses API items and the chat path: items as we store them, and a request as a chat request.

A Responses request is answered by the chat path (one way to render, generate and parse). Its
input items are first put in one stored form (ids given, content as part lists: what
``/input_items`` lists and what ``previous_response_id`` continues from), then the history and
the input become chat messages: an assistant turn's reasoning, message and function calls
become one assistant message (``reasoning_content``, ``content``, ``tool_calls``), a
``function_call_output`` a ``tool`` message. Harmony's own rule (reasoning before the last final
answer is not shown again) is applied by the chat renderer.

Errors the chat path raises name chat fields (``messages[3]``, ``response_format``);
:func:`responses_param` names the Responses field the client sent instead.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from gptoss.api.responses.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputTextPart,
    MessageItem,
    ReasoningItem,
    RefusalPart,
    ResponseCreateRequest,
)
from gptoss.errors import APIError, bad_request

#: ``encrypted_content`` of our reasoning items: the reasoning text, encoded (not encrypted: the
#: same text is in the item's ``content``), so that a client that keeps no state (``store: false``)
#: can send the reasoning back the way it would to OpenAI.
REASONING_BLOB_PREFIX = "gptoss.reasoning.v1:"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def encode_reasoning(text: str) -> str:
    return REASONING_BLOB_PREFIX + base64.b64encode(text.encode()).decode()


def decode_reasoning(blob: str, param: str) -> str:
    """The text of one of our ``encrypted_content`` blobs; anyone else's is a 400 (we cannot read it)."""
    if blob.startswith(REASONING_BLOB_PREFIX):
        try:
            return base64.b64decode(blob[len(REASONING_BLOB_PREFIX) :], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            pass
    raise bad_request(
        "encrypted_content that this server did not produce cannot be read; send the reasoning as content",
        param=param,
        code="invalid_encrypted_content",
    )


# ------------------------------------------------------------------------------------------------
# Input items -> stored items
# ------------------------------------------------------------------------------------------------


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _stored_message(item: MessageItem) -> dict[str, Any]:
    parts = [InputTextPart(type="input_text", text=item.content)] if isinstance(item.content, str) else item.content
    if item.role == "assistant":
        content = [
            {"type": "refusal", "refusal": p.refusal} if isinstance(p, RefusalPart) else _output_text(p.text)
            for p in parts
        ]
        status = item.status or "completed"
        return {
            "id": item.id or new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }
    content = [{"type": "input_text", "text": p.text} for p in parts]  # refusals: refused by the model
    return {"id": item.id or new_id("msg"), "type": "message", "role": item.role, "content": content}


def stored_item(item: Any, param: str) -> dict[str, Any]:
    """One validated input item in the stored form (with an id), as ``/input_items`` lists it."""
    if isinstance(item, MessageItem):
        return _stored_message(item)
    if isinstance(item, FunctionCallItem):
        return {
            "id": item.id or new_id("fc"),
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": item.status or "completed",
        }
    if isinstance(item, FunctionCallOutputItem):
        output = item.output if isinstance(item.output, str) else [p.model_dump() for p in item.output]
        return {
            "id": item.id or new_id("fco"),
            "type": "function_call_output",
            "call_id": item.call_id,
            "output": output,
            "status": item.status or "completed",
        }
    if isinstance(item, ReasoningItem):
        if item.content is not None:
            content = [p.model_dump() for p in item.content]
        elif item.encrypted_content is not None and not item.summary:
            text = decode_reasoning(item.encrypted_content, f"{param}.encrypted_content")
            content = [{"type": "reasoning_text", "text": text}]
        else:
            content = []
        return {
            "id": item.id or new_id("rs"),
            "type": "reasoning",
            "summary": [p.model_dump() for p in item.summary],
            "content": content,
        }
    raise TypeError(f"{param}: {type(item).__name__} should have been refused by the request model")


def stored_input(req: ResponseCreateRequest) -> list[dict[str, Any]]:
    """This request's input items in the stored form."""
    if isinstance(req.input, str):
        return [_stored_message(MessageItem(role="user", content=req.input))]
    return [stored_item(item, f"input[{i}]") for i, item in enumerate(req.input)]


# ------------------------------------------------------------------------------------------------
# Stored items -> chat messages
# ------------------------------------------------------------------------------------------------


def _texts(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "\n".join(p.get("text", "") for p in parts if p.get("type") in ("input_text", "output_text"))


def _reasoning_text(item: dict[str, Any]) -> str:
    parts = item.get("content") or item.get("summary") or []
    return "\n".join(p.get("text", "") for p in parts)


def chat_messages(items: list[dict[str, Any]], origins: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Stored items as chat messages, and for each message the Responses param it came from.

    The reasoning, message and function calls of one assistant turn make one assistant message
    (in Harmony's order: analysis, then text, then calls); a new turn starts when reasoning or
    text follows what the pending turn already said.
    """
    messages: list[dict[str, Any]] = []
    where: list[str] = []
    pending: dict[str, Any] | None = None
    pending_origin = ""

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            messages.append(pending)
            where.append(pending_origin)
            pending = None

    for item, origin in zip(items, origins):
        kind = item["type"]
        if kind in ("reasoning", "function_call") or (kind == "message" and item["role"] == "assistant"):
            said = pending is not None and (pending.get("content") is not None or pending.get("tool_calls"))
            if pending is None or (kind != "function_call" and said):
                flush()
                pending, pending_origin = {"role": "assistant"}, origin
            if kind == "reasoning":
                text = _reasoning_text(item)
                prior = pending.get("reasoning_content")
                pending["reasoning_content"] = text if prior is None else f"{prior}\n{text}"
            elif kind == "function_call":
                call = {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
                pending.setdefault("tool_calls", []).append(call)
            else:
                pending["content"] = [
                    {"type": "refusal", "refusal": p["refusal"]}
                    if p["type"] == "refusal"
                    else {"type": "text", "text": p["text"]}
                    for p in item["content"]
                ]
            continue
        flush()
        if kind == "message":
            messages.append({"role": item["role"], "content": _texts(item["content"])})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _texts(item["output"])})
        else:
            raise TypeError(f"{origin}: stored item of type {kind!r}")
        where.append(origin)
    flush()
    return messages, where


# ------------------------------------------------------------------------------------------------
# The request -> a chat request body
# ------------------------------------------------------------------------------------------------


def chat_body(
    req: ResponseCreateRequest, history: list[dict[str, Any]], inputs: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """The chat request that answers ``req`` (for ChatCompletionRequest.model_validate), and the
    Responses param each of its messages came from."""
    items = history + inputs
    origins = ["previous_response_id"] * len(history) + [
        "input" if isinstance(req.input, str) else f"input[{i}]" for i in range(len(inputs))
    ]
    messages, where = chat_messages(items, origins)
    if req.instructions:
        messages.insert(0, {"role": "developer", "content": req.instructions})
        where.insert(0, "instructions")
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "stream": bool(req.stream),
        "include_reasoning": True,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "parallel_tool_calls": req.parallel_tool_calls,
        "user": req.user,
    }
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, FunctionToolChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    if req.text is not None:
        if req.text.format is not None:
            body["response_format"] = req.text.format.as_response_format()
        if req.text.verbosity is not None:
            body["verbosity"] = req.text.verbosity
    return {k: v for k, v in body.items() if v is not None}, where


_CHAT_PARAMS = {
    "response_format": "text.format",
    "verbosity": "text.verbosity",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
}


def responses_param(param: str | None, where: list[str]) -> str | None:
    """The Responses field behind a chat request's ``param`` (``messages[3].content`` -> ``input[1]``)."""
    if not param:
        return param
    head, _, rest = param.partition(".")
    if head.startswith("messages["):
        try:
            return where[int(head[len("messages[") : -1])]
        except (ValueError, IndexError):
            return "input"
    if head == "messages":
        return "input"
    if head.startswith("tools[") and rest.startswith("function"):
        return head + rest[len("function") :]
    if head == "tool_choice":
        return "tool_choice"
    return _CHAT_PARAMS.get(head, param)


def restate(err: APIError, where: list[str]) -> APIError:
    """``err`` (from the chat path) with the Responses param and the message's leading param renamed."""
    param = responses_param(err.param, where)
    if param == err.param:
        return err
    message = err.message
    if err.param and message.startswith(err.param):
        message = param + message[len(err.param) :]
    return APIError(err.status, message, param=param, code=err.code, type=err.type, headers=err.headers)

"""Request bodies, SSE parsing and SDK plumbing shared by the protocol tests of every endpoint."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from gptoss.api.common.protocol import SSE_DONE, Usage, validation_error_to_api_error
from gptoss.errors import APIError

USER = {"role": "user", "content": "Hello"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "messages": [USER], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "prompt": "Once upon a time", **fields}


def api_error(cls: type, body: Any) -> APIError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return validation_error_to_api_error(info.value)


def make_usage(
    prompt_tokens: int, completion_tokens: int, *, reasoning_tokens: int | None = None, cached_tokens: int | None = None
) -> Usage:
    """Usage as the handlers fill it: total computed, the details only when known."""
    data: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        data["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    if cached_tokens is not None:
        data["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return Usage.model_validate(data)


def sse_json(sse: str) -> dict[str, Any]:
    assert sse.startswith("data: ") and sse.endswith("\n\n")
    assert "\n" not in sse[: -2]
    return json.loads(sse[len("data: ") : -2])


def wire(model: Any) -> Any:
    """What goes over the wire: the model's JSON, parsed back."""
    return json.loads(model.model_dump_json())


def sdk_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def sse_response(events: list[str]) -> httpx.Response:
    body = "".join(events) + SSE_DONE
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

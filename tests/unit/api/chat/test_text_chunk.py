"""The fast path for text-only stream chunks writes exactly what the chunk model writes."""

from __future__ import annotations

import json

import pytest

from gptoss.api.chat.protocol import ChatCompletionChunk
from gptoss.api.chat.serving import TextChunk

TEXTS = ["hello", "", " ", 'quote " and \\ backslash', "new\nline\ttab\r", "\x00\x01\x1f\x7f", "é日本語🙂", "\u2028\u2029",
         "</script>", "\ufffd"]


def model_line(index: int, delta: dict) -> str:
    return ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-oss-20b",
            "choices": [{"index": index, "delta": delta, "finish_reason": None}],
            "usage": None,
        }
    ).to_sse()


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize(
    "keys", [("content",), ("reasoning_content", "reasoning"), ("reasoning", "reasoning_content"), ("refusal",)]
)
def test_text_chunks_equal_the_models_json(text: str, keys: tuple[str, ...]):
    delta = dict.fromkeys(keys, text)
    fast = TextChunk("chatcmpl-abc", 1700000000, "gpt-oss-20b")(3, delta)
    assert fast == model_line(3, delta)
    assert json.loads(fast[len("data: "):])["choices"][0]["delta"] == delta


@pytest.mark.parametrize(
    "delta",
    [{}, {"role": "assistant", "content": ""}, {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
     {"content": None}],
)
def test_anything_but_text_goes_through_the_model(delta: dict):
    assert TextChunk("chatcmpl-abc", 1700000000, "gpt-oss-20b")(0, delta) is None

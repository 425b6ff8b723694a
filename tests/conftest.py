"""Shared fixtures. End-to-end tests run the real ``bentoml serve`` with the tiny model."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
# Keep the tiny model and the vocabulary copy between runs (gitignored).
os.environ.setdefault("GPTOSS_CACHE_DIR", str(REPO / ".cache" / "gptoss"))
# The test servers' stored responses: a temporary directory of this test run, not the user's ~/.local/state.
if "GPTOSS_STATE_DIR" not in os.environ:
    os.environ["GPTOSS_STATE_DIR"] = tempfile.mkdtemp(prefix="gptoss_state_")
    atexit.register(shutil.rmtree, os.environ["GPTOSS_STATE_DIR"], True)
SERVER_FIXTURES = frozenset({"server", "isolated_server", "small_server"})


ENGINES = ("transformers", "vllm")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engines",
        default=os.environ.get("GPTOSS_TEST_ENGINES", "transformers"),
        help="comma-separated engines the end-to-end API suite runs against: transformers, vllm "
        "(env GPTOSS_TEST_ENGINES; vllm needs `make setup-vllm`)",
    )


def selected_engines(config: pytest.Config) -> list[str]:
    engines = [e.strip() for e in config.getoption("--engines").split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise pytest.UsageError(f"--engines: choose from {', '.join(ENGINES)} (got {', '.join(sorted(unknown))})")
    return engines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The server fixtures run on every selected engine for tests marked ``engines`` (the API suite),
    on ours alone for the rest (auth, limits, packaging: nothing there depends on the engine)."""
    if "engine" in metafunc.fixturenames:
        engines = selected_engines(metafunc.config)
        if metafunc.definition.get_closest_marker("engines") is None:
            engines = ["transformers"]
        metafunc.parametrize("engine", engines, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``e2e``: everything under tests/e2e/, and any test that starts a real server. An end-to-end
    test runs only on the selected engines (the default engine's own tests count as ours)."""
    engines = selected_engines(config)
    keep, drop = [], []
    for item in items:
        if "e2e" in item.path.parts or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
            callspec = getattr(item, "callspec", None)
            engine = callspec.params.get("engine", "transformers") if callspec else "transformers"
            if engine not in engines:
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> str:
    """The engine a server fixture starts (parametrised by pytest_generate_tests)."""
    return getattr(request, "param", "transformers")


ADMIN_KEY = "sk-test-admin-0123456789abcdef"
CHAT_KEY = "sk-test-chatonly-0123456789abcdef"
MODELS_KEY = "sk-test-modelsonly-0123456789abcd"
LIMITED_KEY = "sk-test-limited-0123456789abcdef"
OTHER_MODEL_KEY = "sk-test-othermodel-0123456789abcd"
TPM_KEY = "sk-test-tpm-0123456789abcdef0000"

KEYS_YAML = f"""
keys:
  - name: admin
    key: {ADMIN_KEY}
    permissions: [all]
  - name: chatter
    key: {CHAT_KEY}
    permissions: [chat]
  - name: lister
    key: {MODELS_KEY}
    permissions: [models]
  - name: limited
    key: {LIMITED_KEY}
    permissions: [all]
    limits: {{rpm: 2}}
  - name: othermodel
    key: {OTHER_MODEL_KEY}
    permissions: [all]
    models: [some-other-model]
  - name: tokenbudget
    key: {TPM_KEY}
    permissions: [all]
    limits: {{tpm: 400}}
"""


# Harmony's stop tokens (<|endoftext|>, <|return|>, <|end|>, <|call|>) banned: a random-weight model
# then generates until max_tokens on any engine, however fast it is.
NO_STOP = {str(token): -100 for token in (199999, 200002, 200007, 200012)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """The free port was taken by another socket before the server bound it."""


class RemoteServer:
    """``bentoml serve service:GptOss`` in a subprocess on a free port (cf. vLLM's RemoteOpenAIServer)."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        startup_timeout: float = 240.0,
        log_path: Path | None = None,
        port: int | None = None,
        wait: bool = True,
        engine: str = "transformers",
    ) -> None:
        self.engine = engine
        # Each server gets its own BENTOML_HOME: `bentoml serve` empties the Prometheus directory
        # under it at start, so servers sharing one would clobber each other's /metrics.
        self._home = tempfile.mkdtemp(prefix="bentoml_home_")
        self._env = {**os.environ, "GPTOSS_MODEL": "tiny", "BENTOML_HOME": self._home, "GPTOSS_ENGINE": engine}
        self._python = sys.executable
        if engine == "vllm":
            self._python = vllm_python()
            # vLLM's CPU build: a small KV cache, so that several test servers fit in RAM at once.
            self._env["GPTOSS_VLLM_CPU_KV_CACHE_GIB"] = "1"
            startup_timeout = max(startup_timeout, 300.0)
        self._env.update(env)
        # Always a log file: it tells a port taken between free_port() and the bind from other failures.
        self.log_path = log_path or Path(self._home) / "server.log"
        for attempt in range(3):
            self._start(port or free_port())
            if not wait:
                return
            try:
                self._wait_ready(startup_timeout)
                return
            except PortTaken:
                if port is not None or attempt == 2:
                    raise
                self._log.close()

    def _start(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [self._python, "-m", "bentoml", "serve", "service:GptOss", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_listening(self, timeout: float = 120.0) -> None:
        """Until the HTTP server answers at all (the model may still be loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url("/livez"), timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server not listening in {timeout}s: {self.logs()[-4000:]}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                logs = self.logs()
                error = PortTaken if "Address already in use" in logs else RuntimeError
                raise error(f"server exited with {self.proc.returncode}: {logs[-4000:]}")
            try:
                if httpx.get(self.url("/health"), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s: {self.logs()[-4000:]}")

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, api_key: str = ADMIN_KEY, **kw):  # -> openai.OpenAI
        import openai

        return openai.OpenAI(base_url=self.url("/v1"), api_key=api_key, max_retries=0, timeout=120, **kw)

    def async_client(self, api_key: str = ADMIN_KEY, **kw):  # -> openai.AsyncOpenAI
        import openai

        return openai.AsyncOpenAI(base_url=self.url("/v1"), api_key=api_key, max_retries=0, timeout=120, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the server and every worker it started.

        BentoML's workers run in sessions of their own, so signalling the arbiter's process
        group is not enough when it is killed outright: collect the tree first, reap it after.
        """
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in tree:
            try:
                child.wait(5 if sig != signal.SIGKILL else 0)
            except (psutil.TimeoutExpired, psutil.NoSuchProcess):
                pass
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        shutil.rmtree(self._home, ignore_errors=True)
        return self.proc.returncode


def vllm_python() -> str:
    """The interpreter of the vLLM flavour's own venv (``make setup-vllm``); GPTOSS_VLLM_PYTHON overrides it."""
    python = os.environ.get("GPTOSS_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(f"the vLLM engine was selected but {python} does not exist: run `make setup-vllm`")
    return python


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A real ``redis-server`` on a free loopback port, ready; (process, redis:// URL)."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


@contextmanager
def replicas_sharing_redis(
    tmp_path_factory: pytest.TempPathFactory, env: Callable[[int, str], dict[str, str]]
) -> Iterator[tuple[RemoteServer, RemoteServer]]:
    """Two real servers and the ``redis-server`` they share; ``env(i, url)`` is replica i's environment."""
    redis, url = start_redis(tmp_path_factory.mktemp("redis"))
    servers: list[RemoteServer] = []
    try:
        for i in range(2):
            servers.append(RemoteServer(env(i, url), log_path=tmp_path_factory.mktemp(f"replica{i}") / "server.log"))
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.stop()
        redis.terminate()
        redis.wait(10)


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(KEYS_YAML)
    return path


@pytest.fixture(scope="session")
def server(engine: str, keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    """One shared server per engine with the tiny model and the test keys."""
    log = tmp_path_factory.mktemp(f"server-{engine}") / "server.log"
    srv = RemoteServer({"GPTOSS_KEYS_FILE": str(keys_file)}, log_path=log, engine=engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def isolated_server(keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    """Like ``server``, with its own BENTOML_HOME (every ``bentoml serve`` empties the Prometheus
    multiprocess directory under BENTOML_HOME when it starts, so servers sharing one clobber each
    other's /metrics), and key names exported in the per-key metrics."""
    home = tmp_path_factory.mktemp("bentoml_home")
    log = tmp_path_factory.mktemp("isolated_server") / "server.log"
    env = {"GPTOSS_KEYS_FILE": str(keys_file), "BENTOML_HOME": str(home), "GPTOSS_METRICS_KEY_NAMES": "true"}
    srv = RemoteServer(env, log_path=log)
    yield srv
    srv.stop()


def tiny_pair(flag: str, **common):
    """The tiny model loaded twice, with the speed-up setting ``flag`` off and then on."""
    from gptoss.engine.loader import load_model, resolve_model_path
    from gptoss.settings import Settings

    path = resolve_model_path(Settings(model="tiny"))
    return tuple(load_model(Settings(model="tiny", **common, **{flag: on}), path) for on in (False, True))


def random_experts(experts: int, top_k: int, hidden: int, device: str = "cpu"):
    """A gpt-oss experts layer with seeded random bf16 weights (no weights on ``meta``)."""
    import torch
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    config = GptOssConfig(
        hidden_size=hidden, intermediate_size=hidden, num_local_experts=experts, num_experts_per_tok=top_k
    )
    config._experts_implementation = "grouped_mm"
    with torch.device(device):
        module = GptOssExperts(config).to(torch.bfloat16)
    if device == "cpu":
        gen = torch.Generator().manual_seed(1)
        for p in module.parameters():
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module

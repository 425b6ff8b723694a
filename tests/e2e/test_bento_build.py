"""`bentoml build` works offline and the Bento holds what a container needs, and nothing more."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gptoss.harmony.vocab import VOCAB_SHA256, export_vocab
from tests.conftest import REPO


def build_bento(home: Path, name: str, *args: str, **env: str) -> Path:
    """`bentoml build [args]` offline into the BentoML home ``home``; the Bento's directory."""
    export_vocab(REPO / "vendor" / "harmony")  # what `make build` does first
    full_env = {**os.environ, "BENTOML_HOME": str(home), "GPTOSS_MODEL": "tiny", "HF_HUB_OFFLINE": "1"}
    for var in ("GPTOSS_MAX_RUNNING", "GPTOSS_MAX_QUEUED", "GPTOSS_GPU_TYPE", "GPTOSS_ENGINE",
                "GPTOSS_VLLM_TENSOR_PARALLEL_SIZE"):  # the defaults are checked
        full_env.pop(var, None)
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", *args, "--output", "tag"],
        cwd=REPO,
        env={**full_env, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    bentos = [p for p in (home / "bentos" / name).iterdir() if p.name != "latest"]
    assert len(bentos) == 1
    return bentos[0]


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bento(tmp_path_factory.mktemp("bentoml_home"), "gpt-oss")


def test_bento_yaml(bento: Path):
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["service"] == "service:GptOss"
    assert spec["labels"]["openai_endpoint"] == "/v1"
    envs = {e["name"]: e.get("value") for e in spec["envs"]}
    assert envs["GPTOSS_MODEL"] == "openai/gpt-oss-20b"
    assert "GPTOSS_KEYS_FILE" in envs and "HF_TOKEN" in envs
    assert envs["GPTOSS_KEYS_FILE"] == "/etc/gptoss/keys.yaml"  # where deploy/README.md mounts it
    # No fixed KV budget: on a GPU the engine sizes its cache from the memory free after loading.
    assert "GPTOSS_KV_CACHE_TOKENS" not in envs
    config = spec["services"][0]["config"]
    assert config["traffic"]["timeout"] >= 300
    assert config["http"]["port"] == 8000
    # One 24 GB GPU: gpt-oss-20b with MXFP4 experts (14.3 GiB resident) plus KV cache (README, GPU sizing).
    assert config["resources"] == {"gpu": 1, "gpu_type": "nvidia-l4"}
    # What one replica decodes at once (GPU default max_running 128): the autoscaler's target.
    assert config["traffic"]["concurrency"] == 128
    # BentoML's tracing opens a span per streamed chunk: off on the generation routes by default.
    assert config["tracing"]["excluded_urls"] == ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/generate"]
    # GPTOSS_MODEL=tiny: nothing to pin, so the build needed no network.
    assert spec["models"] == [] and spec["services"][0]["models"] == []


def test_dockerfile_uses_cuda_and_python_311(bento: Path):
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8" in dockerfile
    assert "python3.11" in dockerfile
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==" in reqs and "openai-harmony" in reqs and "bpe-openai" in reqs


def test_bento_files(bento: Path):
    src = bento / "src"
    names = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    for required in (
        "service.py", "openai_compat.py", "auth.py", "requirements.txt", "gptoss/__init__.py",
        "gptoss/engine/core.py", "gptoss/harmony/parse.py", "gptoss/api/app.py", "gptoss/auth/keyfile.py",
        "gptoss/observability/metrics.py", "gptoss/kernels/attention.py",
    ):
        assert required in names
    vocab = src / "vendor" / "harmony" / "o200k_base.tiktoken"
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256
    assert not any(n.startswith(EXCLUDED_DIRS) for n in names)
    assert not any("__pycache__" in n or n.endswith((".safetensors", "keys.yaml")) for n in names)


EXCLUDED_DIRS = ("tests/", "bench/", "deploy/", ".cache/", ".venv/", ".venv-vllm/", ".pytest_cache/")


# --- the vLLM Bento (bentofile-vllm.yaml) --------------------------------------------------------


def test_vllm_bento(tmp_path: Path):
    """`bentoml build -f bentofile-vllm.yaml`, offline: vLLM's dependency set and engine, sized
    for one 24 GB GPU per tensor-parallel shard (MXFP4 weights), with nothing else to set."""
    bento = build_bento(tmp_path / "home", "gpt-oss-vllm", "-f", "bentofile-vllm.yaml")
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["name"] == "gpt-oss-vllm" and spec["service"] == "service:GptOss"
    envs = {e["name"]: e.get("value") for e in spec["envs"]}
    assert envs["GPTOSS_ENGINE"] == "vllm" and envs["GPTOSS_MODEL"] == "openai/gpt-oss-20b"
    assert envs["GPTOSS_KEYS_FILE"] == "/etc/gptoss/keys.yaml" and "HF_TOKEN" in envs
    assert "GPTOSS_KV_CACHE_TOKENS" not in envs  # vLLM sizes its cache from its memory share
    config = spec["services"][0]["config"]
    assert config["resources"] == {"gpu": 1, "gpu_type": "nvidia-l4"}
    assert config["traffic"]["concurrency"] == 128 and config["http"]["port"] == 8000
    reqs = [line.strip() for line in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()]
    assert "vllm==0.32.0" in reqs and "bentoml==1.4.40" in reqs
    # vLLM pins these itself; oss-harmony (vLLM's) provides openai_harmony.
    assert not any(r.startswith(("torch", "transformers", "fastapi", "openai-harmony")) for r in reqs)
    assert "FROM nvidia/cuda:12.8" in (bento / "env" / "docker" / "Dockerfile").read_text()
    src = bento / "src"
    names = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert {"service.py", "gptoss/engine/vllm_engine.py", "vendor/harmony/o200k_base.tiktoken"} <= names
    assert not any(n.startswith(EXCLUDED_DIRS) for n in names)

    # Tensor parallelism at build time: one GPU per shard; a GPTOSS_GPU_TYPE that is set wins.
    bento = build_bento(tmp_path / "home-tp2", "gpt-oss-vllm", "-f", "bentofile-vllm.yaml",
                        GPTOSS_VLLM_TENSOR_PARALLEL_SIZE="2", GPTOSS_GPU_TYPE="nvidia-a10g")
    config = yaml.safe_load((bento / "bento.yaml").read_text())["services"][0]["config"]
    assert config["resources"] == {"gpu": 2, "gpu_type": "nvidia-a10g"}


# --- the model reference -------------------------------------------------------------------------


def _declared_model(model: str, tmp_path: Path) -> dict | None:
    """What service.py declares for GPTOSS_MODEL=model, read in a fresh process without network."""
    code = (
        "import json, service\n"
        "m = service.GptOss.inner.hf_model\n"
        "print(json.dumps(None if m is None else {'type': type(m).__name__, 'model_id': m.model_id,\n"
        "    'revision': m.revision, 'exclude': m.exclude, 'include': m.include,\n"
        "    'service_models': [type(x).__name__ for x in service.GptOss.models]}))\n"
    )
    env = {
        **os.environ,
        "GPTOSS_MODEL": model,
        "GPTOSS_API_KEYS": "sk-test-declared-model-0123456789",
        "HF_HUB_OFFLINE": "1",  # resolving (or pinning) the model would fail loudly
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hub_model_is_declared_for_pinning(tmp_path: Path):
    declared = _declared_model("openai/gpt-oss-20b", tmp_path)
    assert declared == {
        "type": "HuggingFaceModel",
        "model_id": "openai/gpt-oss-20b",
        "revision": "main",  # unresolved here; `bentoml build` pins the commit
        "exclude": ["original/*", "metal/*"],
        "include": None,
        "service_models": ["HuggingFaceModel"],
    }
    assert not (tmp_path / "hf").exists()  # nothing was downloaded


@pytest.mark.parametrize("kind", ["tiny", "directory"])
def test_tiny_and_local_directories_declare_no_model(kind: str, tmp_path: Path):
    model = "tiny" if kind == "tiny" else str(tmp_path)
    assert _declared_model(model, tmp_path) is None


# --- the Harmony vocabulary is never downloaded ---------------------------------------------------


def _no_network_env(tmp_path: Path) -> dict[str, str]:
    """Empty home and caches, no TIKTOKEN_ENCODINGS_BASE, every proxy pointing at a closed port."""
    home = tmp_path / "home"
    for d in ("home", "xdg", "tmp", "tiktoken-rs", "gptoss-cache"):
        (tmp_path / d).mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_ENCODINGS_BASE" and "proxy" not in k.lower()}
    dead = "http://127.0.0.1:9"
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
        TMPDIR=str(tmp_path / "tmp"),  # openai-harmony's download cache defaults to $TMPDIR/tiktoken-rs-cache
        TIKTOKEN_RS_CACHE_DIR=str(tmp_path / "tiktoken-rs"),
        TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken-rs"),
        GPTOSS_CACHE_DIR=str(tmp_path / "gptoss-cache"),
        HTTPS_PROXY=dead, HTTP_PROXY=dead, ALL_PROXY=dead, https_proxy=dead, http_proxy=dead, all_proxy=dead,
        NO_PROXY="", no_proxy="",
        HF_HUB_OFFLINE="1",
    )
    return env


_LOAD = (
    "import sys; sys.path.insert(0, '.')\n"
    "from pathlib import Path\n"
    "import gptoss.harmony.vocab as hv\n"
    "enc = hv.load_encoding(Path(sys.argv[1]))\n"
    "assert enc.decode(enc.encode('hello world')) == 'hello world'\n"
    "print('BASE', hv.os.environ[hv.ENV_VAR])\n"
)


def test_network_is_really_blocked_in_the_check(tmp_path: Path):
    """Control: without our loader, openai-harmony tries to download the vocabulary and fails here."""
    code = "from openai_harmony import *; load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_no_network_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "download" in out.stderr.lower()


def test_bento_loads_the_bundled_vocabulary_without_network(bento: Path, tmp_path: Path):
    """What the container does at start: the vocabulary comes from the Bento, never from the network."""
    src = bento / "src"
    out = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "gptoss-cache")], cwd=src,
                         env=_no_network_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("BASE ")[-1].strip() == str(src / "vendor" / "harmony")


def test_without_the_bundle_the_packaged_copy_is_used_without_network(tmp_path: Path):
    """A checkout without `make build` (no vendor/harmony): bpe-openai's copy, still offline."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copytree(REPO / "gptoss", app / "gptoss", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "gptoss-cache"
    out = subprocess.run([sys.executable, "-c", _LOAD, str(cache)], cwd=app, env=_no_network_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("BASE ")[-1].strip() == str(cache / "harmony")
    assert hashlib.sha256((cache / "harmony" / "o200k_base.tiktoken").read_bytes()).hexdigest() == VOCAB_SHA256


def test_empty_keys_file_setting_means_none(monkeypatch: pytest.MonkeyPatch):
    """`--env GPTOSS_KEYS_FILE=` (BentoCloud with GPTOSS_API_KEYS) must undo the image's default path."""
    from gptoss.settings import Settings

    monkeypatch.setenv("GPTOSS_KEYS_FILE", "")
    assert Settings().keys_file is None
    monkeypatch.setenv("GPTOSS_KEYS_FILE", "/etc/gptoss/keys.yaml")
    assert str(Settings().keys_file) == "/etc/gptoss/keys.yaml"


# --- `systemctl reload` (deploy/gpt-oss.service: ExecReload=pkill -HUP --parent $MAINPID) ----------


def test_sighup_to_the_worker_reloads_keys_without_a_restart(tmp_path: Path):
    """SIGHUP to BentoML's worker (the arbiter's child) re-reads the keys file in place, even
    before the first request; the model is not reloaded."""
    import signal

    import httpx
    import psutil

    from tests.conftest import RemoteServer

    class QuietServer(RemoteServer):
        """Ready when the engine is, without any HTTP request (so no request installs anything)."""

        def _wait_ready(self, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while "Engine ready" not in self.logs():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start: {self.logs()[-4000:]}")
                time.sleep(0.2)

    old_key, new_key = "sk-test-before-reload-0123456789", "sk-test-after-reload-0123456789"
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: before\n    key: {old_key}\n")
    # Its own BENTOML_HOME: starting a server empties that home's Prometheus directory.
    env = {"GPTOSS_KEYS_FILE": str(keys), "BENTOML_HOME": str(tmp_path / "bentoml_home")}
    srv = QuietServer(env, log_path=tmp_path / "server.log")
    try:
        workers = psutil.Process(srv.proc.pid).children()
        assert len(workers) == 1
        keys.write_text(f"keys:\n  - name: after\n    key: {new_key}\n")
        for w in workers:
            w.send_signal(signal.SIGHUP)  # what `pkill -HUP --parent $MAINPID` does
        deadline = time.monotonic() + 20
        while "Reloaded API keys" not in srv.logs():
            assert time.monotonic() < deadline, srv.logs()[-3000:]
            time.sleep(0.1)
        assert [p.pid for p in psutil.Process(srv.proc.pid).children()] == [w.pid for w in workers]
        assert srv.logs().count("Engine ready") == 1  # no restart, no model reload
        models = srv.url("/v1/models")
        assert httpx.get(models, headers={"Authorization": f"Bearer {new_key}"}, timeout=10).status_code == 200
        assert httpx.get(models, headers={"Authorization": f"Bearer {old_key}"}, timeout=10).status_code == 401
    finally:
        srv.stop()

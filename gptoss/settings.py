"""All runtime settings in one place, read from environment variables (prefix ``GPTOSS_``).

docs/configuration.md is generated from this file (``python -m gptoss.settings > docs/configuration.md``,
or ``make docs``): the ``# --- group`` comments below are its sections, each field's description
its text. A test fails when the file is stale.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server settings. Environment variable = ``GPTOSS_`` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="GPTOSS_", extra="ignore")

    # --- model -------------------------------------------------------------------------------
    model: str = Field(
        "openai/gpt-oss-20b",
        description="HF model id, a local model directory, or 'tiny' (offline random-weight test model; "
        "'tiny-mxfp4': the same with its experts in gpt-oss's MXFP4 layout).",
    )
    served_model_name: str = Field("gpt-oss-20b", description="Model id clients send and /v1/models lists.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "gptoss-bento",
        description="Where the tiny model and the Harmony vocabulary copy are kept.",
    )
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu' or 'cuda'.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="Weights dtype. 'auto' keeps the checkpoint's: gpt-oss's MXFP4 experts stay MXFP4 on every "
        "device (each step dequantises the experts it routes to), the rest bf16. 'bfloat16' / 'float32' "
        "dequantise every expert at load.",
    )

    # --- generation defaults ---------------------------------------------------------------------
    default_max_tokens: int = Field(
        4096, ge=1, description="max_tokens when a request gives none (capped by the context window)."
    )
    max_reasoning_tokens: int = Field(
        0,
        ge=0,
        description="Reasoning budget: most tokens the analysis may take before the answer is opened "
        "(0 = none; requests may set max_reasoning_tokens). A structured-output request without one "
        "gets half its max_tokens.",
    )
    reasoning_field: Literal["both", "reasoning_content", "reasoning"] = Field(
        "both", description="Which message field carries the model's reasoning."
    )

    # --- engine / backpressure -------------------------------------------------------------------
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="Which engine generates: 'transformers' (ours), 'vllm' (needs the vLLM dependency set, "
        "requirements-vllm.txt), or 'auto' (vLLM when it is installed and a CUDA GPU is present, else ours).",
    )
    max_running: int = Field(0, ge=0, description="Max sequences decoded together (0 = per device: 64 CPU, 128 GPU).")
    max_queued: int = Field(256, ge=0, description="Max requests waiting for a slot; more get 429.")
    max_batched_tokens: int = Field(2048, ge=16, description="Max prompt tokens prefilled in one engine step.")
    kv_cache_tokens: int = Field(
        0,
        ge=0,
        description="KV-cache budget in tokens over all running sequences "
        "(0 = CPU 262144, GPU sized from free memory).",
    )
    request_timeout: float = Field(
        600.0, gt=0, description="Seconds a request may run before it is stopped (BentoML's own limit is set above it)."
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM.")

    # --- vLLM engine (GPTOSS_ENGINE=vllm) ------------------------------------------------------------
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one replica shards the model over (the Bento asks for this many GPUs)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.90, gt=0, le=1, description="Share of each GPU's memory vLLM may use (weights, activations, KV cache)."
    )
    vllm_max_model_len: int = Field(
        0, ge=0, description="Context window in tokens (0 = the model's own, 131072 for gpt-oss)."
    )
    vllm_prefix_caching: bool = Field(True, description="Reuse the KV cache of prompt prefixes shared by requests.")
    vllm_kv_cache_dtype: Literal["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="KV-cache element type: 'auto' follows the model; fp8 halves it where the GPU has fp8."
    )
    vllm_cpu_kv_cache_gib: int = Field(4, ge=1, description="CPU only (vLLM's CPU build): GiB of RAM for the KV cache.")

    # --- packaging (read when `bentoml build` imports service.py; recorded in the Bento) ------------
    gpu_type: str = Field(
        "nvidia-l4",
        description="BentoCloud GPU type in the Bento's resources, read by `bentoml build`, for both Bentos: "
        "the default, 24 GB, holds gpt-oss-20b with MXFP4 experts and its KV cache (README, GPU sizing).",
    )

    # --- auth --------------------------------------------------------------------------------------
    keys_file: Path | None = Field(None, description="Path of the API keys file (YAML).")
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated keys (full permissions), besides the keys file. A secret: never in a repr or log.",
    )
    auth_disabled: bool = Field(False, description="Serve without API keys (logs a warning). Never on the internet.")
    public_docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json without a key.")
    public_metrics: bool = Field(False, description="Serve /metrics without a key (else any valid key may read it).")
    limits_store: str = Field(
        "memory",
        description="Where per-key rpm/tpm/concurrency counters live: 'memory' (each replica its own) or "
        "'redis://host:port/db' (shared by every replica).",
    )

    metrics_key_names: bool = Field(
        False,
        description="Label the per-key token counters with the key's name (names are often e-mail addresses); "
        "off: every key is counted under '-'.",
    )

    # --- stored responses (Responses API) ------------------------------------------------------------
    state_dir: Path = Field(
        Path.home() / ".local" / "state" / "gptoss",
        description="Directory of the SQLite database of stored responses (`store: true`), created if missing. "
        "Keep it on a persistent local disk (a volume in a container); unused when GPTOSS_STATE_URL is set.",
    )
    state_url: str = Field(
        "",
        description="'redis://host:port/db' (rediss://, unix://): keep stored responses in Redis, shared by every "
        "replica (durable as that Redis is configured). Empty: SQLite in GPTOSS_STATE_DIR.",
    )
    state_retention_days: float = Field(
        30.0,
        gt=0,
        description="Days a stored response can be read back and continued (OpenAI keeps 30); older ones are deleted.",
    )
    state_max_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Cap on the stored responses' size (their JSON bytes); past it the oldest are deleted first "
        "(0 = no cap).",
    )

    # --- logging -----------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Level of this project's loggers.")
    log_prompts: bool = Field(False, description="Debug: include prompts and outputs in logs.")
    access_log: bool = Field(True, description="One 'gptoss.access' log line per API request.")
    access_log_format: Literal["logfmt", "json"] = Field("logfmt", description="Format of the access log lines.")
    trace_generation: bool = Field(
        False,
        description="BentoML's OpenTelemetry spans on the generation routes too (one span per streamed "
        "chunk: CPU on every token); on only where traces are exported.",
    )

    # --- advanced: kernel speed-ups (exact; the defaults suit every device) ---------------------
    cpu_prepack: bool = Field(True, description="CPU: prepack the output projection for oneDNN (exact, faster).")
    gqa_attention: bool = Field(
        True, description="Eager attention reads the KV cache in place instead of repeating it per query head."
    )
    cpu_dense_experts: bool = Field(
        True, description="CPU: small MoE layers run all experts in two batched matmuls when that is cheap (exact)."
    )
    lean_decode: bool = Field(
        True, description="Decode steps skip transformers' per-call mask building and wrappers (same ops, exact)."
    )
    gpu_batched_experts_tokens: int = Field(
        4,
        ge=0,
        description="GPU: MoE layers of steps with up to this many tokens use batched_mm, larger steps grouped_mm "
        "(0 = always grouped_mm).",
    )

    @field_validator("limits_store")
    @classmethod
    def _known_limits_store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be 'memory' or a redis:// (rediss://, unix://) URL")
        return value

    @field_validator("state_url")
    @classmethod
    def _known_state_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (SQLite in GPTOSS_STATE_DIR) or a redis:// (rediss://, unix://) URL")
        return value

    @field_validator("keys_file", mode="before")
    @classmethod
    def _empty_keys_file_is_unset(cls, value: object) -> object:
        """``GPTOSS_KEYS_FILE=`` (empty) means no file, e.g. to override the image's default path."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def is_tiny(self) -> bool:
        return self.model in ("tiny", "tiny-mxfp4")


# Every logger of this project is a child of "gptoss" (modules log under their package path,
# the access log under "gptoss.access"); BentoML configures the handlers, we set the level.
PROJECT_LOGGER = "gptoss"


def configure_logging(settings: Settings) -> None:
    logging.getLogger(PROJECT_LOGGER).setLevel(settings.log_level.upper())


def redacted_url(url: str) -> str:
    """A store URL (limits, stored responses) for messages and logs, without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_markdown() -> str:
    """docs/configuration.md: every setting, its variable, default and description, by group."""
    import inspect

    source = inspect.getsource(Settings)
    group, groups = "", {}
    for line in source.splitlines():
        heading = re.match(r"\s*# --- (.+?) -{3,}$", line)
        if heading:
            group = heading.group(1).strip()
            continue
        field = re.match(r"    (\w+): .*= Field\(", line)
        if field and field.group(1) in Settings.model_fields:
            groups.setdefault(group, []).append(field.group(1))
    out = [
        "# Configuration",
        "",
        "Every setting is an environment variable, read once at start. This page is generated from",
        "`gptoss/settings.py` (`make docs`); do not edit it by hand.",
        "",
    ]
    for group, names in groups.items():
        out += [f"## {group[0].upper()}{group[1:]}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            info = Settings.model_fields[name]
            default = info.default.get_secret_value() if isinstance(info.default, SecretStr) else info.default
            if isinstance(default, Path) and str(default).startswith(str(Path.home())):
                default = "~" + str(default)[len(str(Path.home())):]
            text = str(default).lower() if isinstance(default, bool) else str(default)
            shown = "–" if default in (None, "") else f"`{text}`"
            out.append(f"| `GPTOSS_{name.upper()}` | {shown} | {info.description} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_markdown(), end="")

"""The documentation that is generated or quoted from the code stays true to it."""

from __future__ import annotations

from gptoss.settings import Settings, settings_markdown
from tests.conftest import REPO


def test_configuration_doc_is_generated_from_the_settings():
    assert (REPO / "docs" / "configuration.md").read_text() == settings_markdown(), "run `make docs`"


def test_every_setting_is_documented_once_with_a_description():
    doc = settings_markdown()
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert doc.count(f"`GPTOSS_{name.upper()}`") == 1, name


def test_kernel_toggles_are_in_their_own_advanced_group():
    doc = settings_markdown()
    advanced = doc.split("## Advanced", 1)[1]
    for name in ("CPU_PREPACK", "GQA_ATTENTION", "LEAN_DECODE", "CPU_DENSE_EXPERTS", "GPU_BATCHED_EXPERTS_TOKENS"):
        assert f"GPTOSS_{name}" in advanced
        assert f"GPTOSS_{name}" not in doc.split("## Advanced", 1)[0]


def test_readme_is_for_users_and_small():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    for marker in ("session ", "Session ", "tried and dropped", "per-round"):
        assert marker not in readme, marker
    assert "make demo" in readme and "make test" in readme and "docs/configuration.md" in readme


def test_readme_gpu_sizing_table_is_the_scripts():
    from gptoss.engine.sizing import between_markers, markdown

    readme = (REPO / "README.md").read_text()
    assert between_markers(readme) == markdown(), "run `python -m gptoss.engine.sizing --readme README.md`"


def test_gpu_sizing_applies_the_engines_kv_rule(monkeypatch):
    """The table's KV tokens are what runner.default_kv_budget gives for the same free memory."""
    import inspect
    from types import SimpleNamespace

    import torch

    from gptoss.engine import sizing
    from gptoss.engine.runner import default_kv_budget

    config = sizing.gpt_oss_20b_config()
    params = inspect.signature(default_kv_budget).parameters
    assert params["fraction"].default == sizing.KV_FRACTION
    weight = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)  # where the engine loaded it
    model = SimpleNamespace(config=config, parameters=lambda: iter([weight]))
    rows, _, _ = sizing.rows(config)
    for free in [r.free for r in rows] + [1 << 20]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 << 30))
        assert default_kv_budget(model) == sizing.kv_budget(free, sizing.kv_bytes_per_token(config))
    assert [r.gpu_gib for r in rows] == [16, 24, 48, 80, 80] and all(r.fits for r in rows)

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

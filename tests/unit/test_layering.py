"""The package's folders are its architecture: imports flow one way, and modules stay small.

api -> harmony / engine types / auth / state; the engine never imports the API, Harmony or auth; Harmony
is pure (no API, engine or auth); kernels know only torch and transformers; state (stored responses)
knows only the settings, and only the API uses it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "gptoss"
MAX_LINES = 600

# For each sub-package, the gptoss sub-packages it must never import.
FORBIDDEN = {
    "engine": {"api", "harmony", "auth", "observability", "state"},
    "kernels": {"api", "harmony", "auth", "engine", "observability", "state"},
    "harmony": {"api", "engine", "auth", "observability", "kernels", "state"},
    "auth": {"api", "engine", "harmony", "kernels", "state"},
    "observability": {"api", "engine", "harmony", "auth", "kernels", "state"},
    "state": {"api", "engine", "harmony", "kernels", "auth"},
}


# The one exception: the tiny random-weight test model is written with the real o200k_harmony
# tokenizer next to its weights, so its builder locates the vocabulary file.
ALLOWED = {("engine/tiny_model.py", "gptoss.harmony.vocab")}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_flow_one_way(path: Path):
    parts = path.relative_to(PACKAGE).parts
    area = parts[0] if len(parts) > 1 else None
    if area is None:  # package-level modules (settings, routes, errors) import no sub-package
        bad = {m for m in _imports(path) if m.startswith("gptoss.") and m.count(".") >= 2}
        assert not bad, f"{path.name} imports {bad}"
        return
    where = "/".join(parts)
    for module in _imports(path):
        if module.startswith("gptoss.") and (where, module) not in ALLOWED:
            target = module.split(".")[1]
            assert target not in FORBIDDEN.get(area, set()), f"{area}/{path.name} imports {module}"


def test_engine_types_import_no_torch():
    """Routes and their tests import the engine's interface without loading torch."""
    assert not {m for m in _imports(PACKAGE / "engine" / "types.py") if m.split(".")[0] in ("torch", "transformers")}


def test_tiny_model_vocabulary_is_harmonys():
    from gptoss.engine.tiny_model import VOCAB_SIZE
    from gptoss.harmony.vocab import HARMONY_VOCAB_SIZE

    assert VOCAB_SIZE == HARMONY_VOCAB_SIZE


def test_top_level_python_files_are_the_entry_points():
    assert sorted(p.name for p in REPO.glob("*.py")) == ["auth.py", "openai_compat.py", "service.py"]


def test_the_detector_sees_a_forbidden_import(tmp_path: Path):
    bad = tmp_path / "m.py"
    bad.write_text("from gptoss.api.app import create_app\nimport gptoss.harmony.vocab\n")
    assert _imports(bad) == {"gptoss.api.app", "gptoss.harmony.vocab"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_stay_small(path: Path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name}: split it along a seam"

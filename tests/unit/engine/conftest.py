"""The tiny model, loaded once per module, for the engine tests."""

import pytest

from gptoss.engine.loader import load_model, resolve_model_path
from gptoss.settings import Settings


@pytest.fixture(scope="module")
def model():
    settings = Settings(model="tiny")
    return load_model(settings, resolve_model_path(settings))

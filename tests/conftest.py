import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import hf_checkpoints

CAUSAL_PRESETS = ["tiny-gemma2", "tiny-gemma3", "tiny-recurrentgemma"]
ALL_TINY = [*CAUSAL_PRESETS, "tiny-embeddinggemma"]


@pytest.fixture(scope="session")
def hf_causal(tmp_path_factory):
    """preset -> (checkpoint dir, transformers model), written once per session."""
    cache = {}

    def get(preset: str):
        if preset not in cache:
            d = tmp_path_factory.mktemp(preset)
            cache[preset] = (d, hf_checkpoints.write_causal(preset, d))
        return cache[preset]

    return get


@pytest.fixture(scope="session")
def hf_embedding(tmp_path_factory):
    d = tmp_path_factory.mktemp("st") / "embeddinggemma"
    return d, hf_checkpoints.write_embedding(d)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield

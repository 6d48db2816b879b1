"""Every preset's parameter counts match the published ones (REFERENCE.md §1a, §2a)."""

import pytest

from gemma_edge import models
from gemma_edge.models import param_counts

# preset -> (embedding params, non-embedding params), exact where REFERENCE.md gives exact figures.
EXACT = {
    "gemma2-2b": (590_118_912, 2_024_517_888),
    "gemma2-9b": (917_962_752, 8_324_201_984),
    "gemma2-27b": (1_180_237_824, 26_047_480_320),
    "gemma3-270m": (167_772_160, 100_326_016),
}
PAPER_VOCAB = 256_128  # G2P counts the JAX table; HF checkpoints (our presets) trim it to 256000
# preset -> non-embedding params in millions, as G3P Table 1 rounds them (its embedding column
# also counts the vision projection for 4B+, which a text model does not have).
ROUNDED_M = {"gemma3-1b": 698, "gemma3-4b": 3209, "gemma3-12b": 10759, "gemma3-27b": 25600}


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_counts(name):
    cfg = models.get_preset(name)
    if cfg.family == "gemma2":
        assert cfg.vocab_size == 256_000
        cfg = cfg.replace(vocab_size=PAPER_VOCAB)
    c = param_counts(cfg)
    assert (c["embedding"], c["non_embedding"]) == EXACT[name]


@pytest.mark.parametrize("name", list(ROUNDED_M))
def test_gemma3_counts_at_published_precision(name):
    c = param_counts(models.get_preset(name))
    assert round(c["non_embedding"] / 1e6) == ROUNDED_M[name]
    assert c["embedding"] == 262_144 * models.get_preset(name).d_model
    if name == "gemma3-1b":
        assert round(c["embedding"] / 1e6) == 302


@pytest.mark.parametrize(
    "name, total, non_emb, emb",
    [
        ("recurrentgemma-2b", 2_682_862_080, 2_027_502_080, 655_360_000),
        ("recurrentgemma-9b", 8_579_977_216, 7_531_401_216, 1_048_576_000),
    ],
)
def test_recurrentgemma_counts(name, total, non_emb, emb):
    c = param_counts(models.get_preset(name))
    assert (c["total"], c["non_embedding"], c["embedding"]) == (total, non_emb, emb)


def test_embeddinggemma_counts():
    c = param_counts(models.get_preset("embeddinggemma-300m"))
    assert (c["embedding"], c["non_embedding"], c["dense"], c["total"]) == (
        201_326_592, 101_536_512, 4_718_592, 307_581_696)  # fmt: skip


def test_layer_patterns():
    g2 = models.get_preset("gemma2-2b").layer_kinds
    assert g2[:4] == ("local", "global", "local", "global") and g2.count("global") == 13
    g3 = models.get_preset("gemma3-1b").layer_kinds
    assert [i for i, k in enumerate(g3) if k == "global"] == [5, 11, 17, 23]
    rg = models.get_preset("recurrentgemma-9b").layer_kinds
    assert (rg.count("recurrent"), rg.count("local")) == (26, 12)
    assert models.get_preset("gemma3-4b").rope_scaling == {"global": 8.0}


def test_unknown_preset():
    with pytest.raises(models.ConfigError, match="unknown preset 'gemma9'"):
        models.get_preset("gemma9")


def test_config_round_trips_through_json():
    import json

    for cfg in models.PRESETS.values():
        assert models.ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg

"""Every ModelConfig field changes what a tiny model computes: no field is read by nothing."""

import dataclasses

import pytest
import torch

from gemma_edge import models
from gemma_edge.models import InputError, ModelConfig
from gemma_edge.models.presets import gemma3_kinds, griffin_kinds

TOKENS = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(TOKENS).index_fill_(1, torch.arange(18, 24), 0)  # right padding

# field -> (base preset, changes that should alter the output)
CASES = {
    "vocab_size": ("tiny-gemma3", dict(vocab_size=600)),
    "d_model": ("tiny-gemma3", dict(d_model=96)),
    "layer_kinds": ("tiny-gemma3", dict(layer_kinds=gemma3_kinds(6, 2))),
    "num_heads": ("tiny-gemma3", dict(num_heads=2)),
    "num_kv_heads": ("tiny-gemma3", dict(num_kv_heads=1)),
    "head_dim": ("tiny-gemma3", dict(head_dim=8)),
    "ffn_dim": ("tiny-gemma3", dict(ffn_dim=96)),
    "window": ("tiny-gemma2", dict(window=4)),
    "query_scale": ("tiny-gemma3", dict(query_scale=4.0)),
    "rope_base": ("tiny-gemma3", dict(rope_base={"local": 100.0, "global": 1_000_000.0})),
    "rope_scaling": ("tiny-gemma3", dict(rope_scaling={})),
    "rotary_fraction": ("tiny-gemma3", dict(rotary_fraction=0.5)),
    "attn_softcap": ("tiny-gemma2", dict(attn_softcap=None)),
    "final_softcap": ("tiny-gemma2", dict(final_softcap=None)),
    "qk_norm": ("tiny-gemma3", dict(qk_norm=False)),
    "post_norms": ("tiny-gemma3", dict(post_norms=False)),
    "causal": ("tiny-embeddinggemma", dict(causal=True)),
    "norm_eps": ("tiny-gemma3", dict(norm_eps=0.5)),
    "tie_embeddings": ("tiny-gemma3", dict(tie_embeddings=False)),
    "embed_scale_bf16": ("tiny-recurrentgemma", dict(embed_scale_bf16=False)),  # sqrt(96) rounds in bf16
    "mlp_bias": ("tiny-gemma3", dict(mlp_bias=True)),
    "attn_out_bias": ("tiny-gemma3", dict(attn_out_bias=True)),
    "lru_width": ("tiny-recurrentgemma", dict(lru_width=192)),
    "conv_width": ("tiny-recurrentgemma", dict(conv_width=2)),
    "lru_c": ("tiny-recurrentgemma", dict(lru_c=4.0)),
    "pooling": ("tiny-embeddinggemma", dict(pooling="first")),
    "dense_dims": ("tiny-embeddinggemma", dict(dense_dims=(96, 64))),
}
# Fields whose effect is behaviour rather than numbers, each tested below.
BEHAVIOUR = {"family", "max_seq_len", "matryoshka_dims"}


def _output(cfg: ModelConfig) -> torch.Tensor:
    model = models.build(cfg, seed=0)
    if not cfg.causal:
        return model(TOKENS, MASK)
    return model(TOKENS)


def _encoder_hidden(cfg: ModelConfig) -> torch.Tensor:
    """Backbone hidden states: how `causal` is compared (flipping it changes the model class)."""
    model = models.build(cfg, seed=0)
    h, _ = model.backbone(TOKENS, torch.arange(TOKENS.shape[1]), None, key_mask=MASK.bool())
    return h


def test_every_field_is_covered():
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert names == set(CASES) | BEHAVIOUR


@pytest.mark.parametrize("field", list(CASES))
def test_field_changes_output(field):
    preset, change = CASES[field]
    base = models.get_preset(preset)
    changed = base.replace(**change)
    assert getattr(changed, field) != getattr(base, field)
    if field == "causal":
        a, b = _encoder_hidden(base), _encoder_hidden(changed)
    else:
        a, b = _output(base), _output(changed)
    assert a.shape != b.shape or (a - b).abs().max().item() > 1e-5


def test_max_seq_len_bounds_the_input():
    cfg = models.get_preset("tiny-gemma3").replace(max_seq_len=16)
    model = models.build(cfg, seed=0)
    model(TOKENS[:, :16])
    with pytest.raises(InputError, match="position 16 is beyond"):
        model(TOKENS[:, :17])
    with pytest.raises(InputError, match="exceeds the model's max_seq_len"):
        model.init_state(1, 32)


def test_matryoshka_dims_bound_truncation():
    model = models.build("tiny-embeddinggemma", seed=0)
    assert model.embed(TOKENS, MASK, dim=32).shape == (2, 32)
    with pytest.raises(InputError, match="dim 48 is not one of"):
        model.embed(TOKENS, MASK, dim=48)


def test_family_selects_checkpoint_layout():
    from gemma_edge.models.keymaps import hf_key

    assert hf_key("gemma3", "backbone.layers.0.pre_norm.weight") == "model.layers.0.input_layernorm.weight"
    assert hf_key("recurrentgemma", "backbone.layers.0.pre_norm.weight") == "model.layers.0.temporal_pre_norm.weight"
    assert hf_key("embeddinggemma", "backbone.final_norm.weight") == "norm.weight"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(family="gemma4"), "family must be one of"),
        (dict(layer_kinds=("global", "dense")), "layer_kinds entries"),
        (dict(num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(window=0), "window must be > 0"),
        (dict(rope_base={"global": 1e6}), "rope_base has no entry for layer kind 'local'"),
        (dict(rotary_fraction=0.1), "must be even"),
        (dict(final_softcap=-1.0), "final_softcap must be None or > 0"),
    ],
)
def test_invalid_configs_are_rejected(change, message):
    with pytest.raises(models.ConfigError, match=message):
        models.get_preset("tiny-gemma3").replace(**change)


def test_recurrent_config_needs_lru_width():
    with pytest.raises(models.ConfigError, match="lru_width must be > 0"):
        models.get_preset("tiny-recurrentgemma").replace(lru_width=0)
    assert griffin_kinds(6) == ("recurrent", "recurrent", "local") * 2

"""Checkpoint key maps as data: (regex over our state_dict key, Hugging Face key template).

The first pattern that matches a key wins; groups fill the template's {0}, {1}, ...
"""

from __future__ import annotations

import re

from .errors import CheckpointError

__all__ = ["KEYMAPS", "hf_key"]

_L = r"backbone\.layers\.(\d+)\."

_GEMMA = [
    (r"backbone\.embed\.weight", "{P}embed_tokens.weight"),
    (r"backbone\.final_norm\.weight", "{P}norm.weight"),
    (_L + r"pre_norm\.weight", "{P}layers.{0}.input_layernorm.weight"),
    (_L + r"post_norm\.weight", "{P}layers.{0}.post_attention_layernorm.weight"),
    (_L + r"pre_ffn_norm\.weight", "{P}layers.{0}.pre_feedforward_layernorm.weight"),
    (_L + r"post_ffn_norm\.weight", "{P}layers.{0}.post_feedforward_layernorm.weight"),
    (_L + r"temporal\.(.+)", "{P}layers.{0}.self_attn.{1}"),
    (_L + r"mlp\.(.+)", "{P}layers.{0}.mlp.{1}"),
    (r"lm_head\.weight", "lm_head.weight"),
]

_GRIFFIN = [
    (r"backbone\.embed\.weight", "{P}embed_tokens.weight"),
    (r"backbone\.final_norm\.weight", "{P}final_norm.weight"),
    (_L + r"pre_norm\.weight", "{P}layers.{0}.temporal_pre_norm.weight"),
    (_L + r"pre_ffn_norm\.weight", "{P}layers.{0}.channel_pre_norm.weight"),
    (_L + r"mlp\.(.+)", "{P}layers.{0}.mlp_block.{1}"),
    (_L + r"temporal\.conv_(weight|bias)", "{P}layers.{0}.temporal_block.conv_1d.{1}"),
    (_L + r"temporal\.rg_lru\.a_param", "{P}layers.{0}.temporal_block.rg_lru.recurrent_param"),
    (_L + r"temporal\.rg_lru\.gate_x_(weight|bias)", "{P}layers.{0}.temporal_block.rg_lru.input_gate_{1}"),
    (_L + r"temporal\.rg_lru\.gate_a_(weight|bias)", "{P}layers.{0}.temporal_block.rg_lru.recurrent_gate_{1}"),
    (_L + r"temporal\.(.+)", "{P}layers.{0}.temporal_block.{1}"),
    (r"lm_head\.weight", "lm_head.weight"),
]

# family -> (patterns, prefix of the backbone's keys in the file)
KEYMAPS = {
    "gemma2": (_GEMMA, "model."),
    "gemma3": (_GEMMA, "model."),
    "recurrentgemma": (_GRIFFIN, "model."),
    "embeddinggemma": (_GEMMA, ""),  # sentence-transformers saves the bare Gemma3TextModel
}

_COMPILED = {fam: [(re.compile(p + r"\Z"), t) for p, t in pats] for fam, (pats, _) in KEYMAPS.items()}


def hf_key(family: str, ours: str) -> str:
    """The Hugging Face key that holds our parameter ``ours``."""
    p = KEYMAPS[family][1]
    for rx, tmpl in _COMPILED[family]:
        m = rx.match(ours)
        if m:
            return tmpl.replace("{P}", p).format(*m.groups())
    raise CheckpointError(f"no checkpoint key mapping for parameter {ours!r} of family {family}")

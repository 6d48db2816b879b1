"""ModelConfig -> config.json and a model -> a Hugging Face-layout checkpoint directory, the inverse
of ``hf_config.config_from_hf`` and ``checkpoint.load`` (tests hold the round trip)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import InputError
from .keymaps import hf_key

__all__ = ["hf_config", "save"]

_KIND = {"global": "full_attention", "local": "sliding_attention"}
_TYPES = {"gemma2": "gemma2", "gemma3": "gemma3_text"}


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x  # transformers' config classes type it as int


def _rope(cfg: ModelConfig) -> dict:
    """transformers' rope_parameters: one per layer type for Gemma 3, one for every layer (Gemma 2)."""
    out = {}
    for kind, hf in _KIND.items():
        if kind in cfg.layer_kinds:
            p = {"rope_type": "default", "rope_theta": cfg.rope_base[kind]}
            if kind in cfg.rope_scaling:
                p = {"rope_type": "linear", "rope_theta": cfg.rope_base[kind], "factor": cfg.rope_scaling[kind]}
            out[hf] = p
    if cfg.family == "gemma2":
        if len({json.dumps(p, sort_keys=True) for p in out.values()}) != 1:
            raise InputError("a Gemma 2 config.json has one RoPE for every layer; this config has one per kind")
        return next(iter(out.values()))
    return out


def hf_config(cfg: ModelConfig) -> dict:
    """The config.json of a Gemma 2 / Gemma 3 causal LM (transformers' v5 RoPE layout)."""
    if cfg.family not in _TYPES:
        raise InputError(f"writing a {cfg.family} checkpoint is not supported; supported: {', '.join(_TYPES)}")
    j = {
        "model_type": _TYPES[cfg.family], "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": len(cfg.layer_kinds), "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_dim,
        "rms_norm_eps": cfg.norm_eps, "hidden_activation": "gelu_pytorch_tanh", "sliding_window": cfg.window,
        "max_position_embeddings": cfg.max_seq_len, "query_pre_attn_scalar": _int_if_whole(cfg.query_scale),
        "attn_logit_softcapping": cfg.attn_softcap, "final_logit_softcapping": cfg.final_softcap,
        "layer_types": [_KIND[k] for k in cfg.layer_kinds], "rope_parameters": _rope(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
    }  # fmt: skip
    if cfg.rotary_fraction != 1.0:
        raise InputError("writing a config with partial rotary embeddings is not supported")
    return j


def save(
    model: nn.Module,
    out_dir: str | Path,
    extra: dict[str, dict] | None = None,
    files: dict[str, str | Path] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (fp32, Hugging Face key names) into
    ``out_dir`` (which must not exist yet, or be empty), plus one JSON file per ``extra`` entry and
    the ``files`` given (name -> source path). Written beside it and renamed into place: a failure
    leaves no half-written directory."""
    import os
    import shutil

    from safetensors.torch import save_file

    d = Path(out_dir)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise InputError(f"{d} exists and is not an empty directory")
    cfg = model.config
    j = hf_config(cfg)
    sd = {hf_key(cfg.family, n): p.detach().to(torch.float32).contiguous() for n, p in model.named_parameters()}
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(j, indent=2))
        for name, content in (extra or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        for name, src in (files or {}).items():
            shutil.copy(src, tmp / name)
        if d.exists():
            d.rmdir()
        tmp.rename(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d

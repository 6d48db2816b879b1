"""config.json (Hugging Face) -> ModelConfig, knowing every key it maps.

Any key that is neither mapped nor known to be inert is an error naming it: an architecture key
silently ignored is how a wrong model ships. ``allow_unknown=True`` turns that into a warning.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from .config import ModelConfig
from .errors import ConfigError
from .presets import gemma2_kinds, gemma3_kinds

__all__ = ["config_from_hf", "MODEL_TYPES", "INERT_KEYS"]

MODEL_TYPES = ("gemma2", "gemma3_text", "recurrent_gemma")

# Keys that do not change what the model computes (training, bookkeeping, generation defaults).
INERT_KEYS = frozenset({
    "transformers_version", "dtype", "torch_dtype", "use_cache", "initializer_range", "architectures",
    "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "w_init_variance_scale",
    "final_w_init_variance_scale", "_name_or_path", "cache_implementation", "model_type",
    "_attn_implementation", "attn_implementation", "output_attentions", "output_hidden_states",
    "return_dict", "tie_word_embeddings", "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "add_cross_attention", "tokenizer_class", "max_length",
})  # fmt: skip

_COMMON = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "rms_norm_eps", "hidden_activation", "hidden_act", "attention_bias",
    "rope_parameters", "rope_theta", "rope_scaling", "max_position_embeddings", "layer_types",
}  # fmt: skip
_MAPPED = {
    "gemma2": _COMMON | {"sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                         "final_logit_softcapping", "use_bidirectional_attention"},
    "gemma3_text": _COMMON | {"sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                              "final_logit_softcapping", "use_bidirectional_attention", "rope_local_base_freq",
                              "_sliding_window_pattern", "sliding_window_pattern"},
    "recurrent_gemma": _COMMON | {"lru_width", "attention_window_size", "conv1d_width", "logits_soft_cap",
                                  "block_types", "partial_rotary_factor", "embeddings_scale_by_sqrt_dim"},
}  # fmt: skip

_HF_KIND = {"full_attention": "global", "sliding_attention": "local"}


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


_MISSING = object()


def _num(j: dict, key: str, where: str, default: Any = _MISSING, *, kind: type = int, minimum: float | None = 1,
         positive: bool = False):  # fmt: skip
    """``j[key]`` as an int (or float), strictly: a bool, a string, a fraction where an integer is
    meant, a non-finite or too-small value is an error naming the key. Absence gives ``default``
    (an error when there is none); null only where the default is None (no softcap), else it is an
    error too: never a silent truncation or replacement."""
    if key not in j:
        _need(default is not _MISSING, where, f"missing required key {key!r}")
        return default
    v = j[key]
    if v is None:
        _need(default is None, where, f"{key} must be {'an integer' if kind is int else 'a number'}, got null")
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    _need(ok, where, f"{key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if kind is int:
        _need(float(v).is_integer(), where, f"{key} must be an integer, got {v!r}")
        v = int(v)
    else:
        v = float(v)
    _need(minimum is None or v >= minimum, where, f"{key} must be >= {minimum}, got {v!r}")
    _need(not positive or v > 0, where, f"{key} must be > 0, got {v!r}")  # a 0 softcap or RoPE base: NaN
    return v


def _rope(j: dict, where: str, kinds: set[str]) -> tuple[dict, dict, float]:
    """RoPE base, linear scaling and rotary fraction per attention kind, from v4 or v5 keys."""
    base, scaling = {}, {}
    fraction = _num(j, "partial_rotary_factor", where, 1.0, kind=float, minimum=0)
    params = j.get("rope_parameters")
    _need(params is None or isinstance(params, dict), where, f"rope_parameters must be an object, got {params!r}")
    _need(j.get("rope_scaling") is None or isinstance(j.get("rope_scaling"), dict), where,
          f"rope_scaling must be an object or null, got {j.get('rope_scaling')!r}")  # fmt: skip
    per_kind: dict[str, dict] = {}
    if isinstance(params, dict) and any(k in params for k in _HF_KIND):
        per_kind = {_HF_KIND[k]: v for k, v in params.items() if k in _HF_KIND}
        bad = [k for k, v in per_kind.items() if not isinstance(v, dict)]
        _need(not bad, where, f"rope_parameters for {bad} layers must be objects")
    elif isinstance(params, dict):
        per_kind = {k: dict(params) for k in kinds}
    else:  # transformers 4.x layout
        theta = _num(j, "rope_theta", where, 10_000.0, kind=float, minimum=0, positive=True)
        per_kind = {k: {"rope_theta": theta} for k in kinds}
        if "local" in kinds and "rope_local_base_freq" in j:
            local = _num(j, "rope_local_base_freq", where, kind=float, minimum=0, positive=True)
            per_kind["local"] = {"rope_theta": local}
        if j.get("rope_scaling"):
            per_kind.setdefault("global", {}).update(j["rope_scaling"])
    for kind, p in per_kind.items():
        rtype = p.get("rope_type", p.get("type", "default"))
        _need(rtype in ("default", "linear"), where, f"rope_type {rtype!r} for {kind} layers is not supported")
        base[kind] = _num(p, "rope_theta", where, 10_000.0, kind=float, minimum=0, positive=True)
        factor = _num(p, "factor", where, 1.0, kind=float, minimum=0)
        if rtype == "linear" and factor != 1.0:
            scaling[kind] = factor
        fraction = _num(p, "partial_rotary_factor", where, fraction, kind=float, minimum=0)
    return base, scaling, fraction


def config_from_hf(j: dict[str, Any], *, where: str = "config.json", allow_unknown: bool = False,
                   encoder: bool = False) -> ModelConfig:  # fmt: skip
    _need(isinstance(j, dict), where, f"expected a JSON object, got {type(j).__name__}")
    mt = j.get("model_type")
    known = isinstance(mt, str) and mt in MODEL_TYPES
    _need(known, where, f"unknown model_type {mt!r}; supported: {', '.join(MODEL_TYPES)}")
    unknown = sorted(set(j) - _MAPPED[mt] - INERT_KEYS)
    if unknown:
        msg = f"{where}: unknown config key(s) {unknown} for model_type {mt!r}"
        if not allow_unknown:
            raise ConfigError(msg + " (pass allow_unknown_keys=True to load anyway)")
        warnings.warn(msg + "; ignored because allow_unknown_keys=True", stacklevel=3)
    act = j.get("hidden_activation") or j.get("hidden_act") or "gelu_pytorch_tanh"
    _need(act in ("gelu_pytorch_tanh", "gelu_tanh"), where, f"hidden_activation {act!r} is not gelu tanh")
    _need(not j.get("attention_bias", False), where, "attention_bias=true is not a Gemma architecture")
    n = _num(j, "num_hidden_layers", where)
    heads, d = _num(j, "num_attention_heads", where), _num(j, "hidden_size", where)
    common = dict(
        vocab_size=_num(j, "vocab_size", where), d_model=d, num_heads=heads,
        num_kv_heads=_num(j, "num_key_value_heads", where, heads),
        norm_eps=_num(j, "rms_norm_eps", where, 1e-6, kind=float, minimum=0),
        tie_embeddings=bool(j.get("tie_word_embeddings", True)),
    )  # fmt: skip

    if mt == "recurrent_gemma":
        return _recurrent_config(j, where, n, d, heads, common)

    bidir = bool(j.get("use_bidirectional_attention") or False)
    _need(mt == "gemma3_text" or not bidir, where, "use_bidirectional_attention is only supported for gemma3_text")
    kinds = _attention_kinds(j, where, mt, n)
    base, scaling, fraction = _rope(j, where, set(kinds))
    head_dim = _num(j, "head_dim", where, d // heads)
    family = "gemma2" if mt == "gemma2" else ("embeddinggemma" if (bidir or encoder) else "gemma3")
    return ModelConfig(
        family=family, layer_kinds=kinds, head_dim=head_dim, ffn_dim=_num(j, "intermediate_size", where),
        window=_num(j, "sliding_window", where, 4096),
        max_seq_len=_num(j, "max_position_embeddings", where, 8192),
        query_scale=_num(j, "query_pre_attn_scalar", where, float(head_dim), kind=float, minimum=0, positive=True),
        rope_base=base, rope_scaling=scaling, rotary_fraction=fraction,
        attn_softcap=_num(j, "attn_logit_softcapping", where, None, kind=float, minimum=0, positive=True),
        final_softcap=_num(j, "final_logit_softcapping", where, None, kind=float, minimum=0, positive=True),
        qk_norm=mt == "gemma3_text", causal=not bidir,
        **common,
    )  # fmt: skip


def _recurrent_config(j: dict[str, Any], where: str, n: int, d: int, heads: int, common: dict) -> ModelConfig:
    blocks = j.get("block_types") or ["recurrent", "recurrent", "attention"]
    _need(isinstance(blocks, list), where, f"block_types must be a list, got {blocks!r}")
    _need(set(blocks) <= {"recurrent", "attention"}, where, f"block_types {blocks} has an unknown entry")
    kinds = tuple("recurrent" if blocks[i % len(blocks)] == "recurrent" else "local" for i in range(n))
    base, scaling, fraction = _rope({"partial_rotary_factor": 0.5, **j}, where, {"local"})
    head_dim = _num(j, "head_dim", where, d // heads)
    _need(head_dim == d // heads, where, f"head_dim {head_dim} must equal hidden_size/heads = {d // heads}")
    _need(j.get("embeddings_scale_by_sqrt_dim", True), where, "embeddings_scale_by_sqrt_dim=false is unsupported")
    return ModelConfig(
        family="recurrentgemma", layer_kinds=kinds, head_dim=head_dim,
        ffn_dim=_num(j, "intermediate_size", where, minimum=2) // 2,  # HF's MLP halves intermediate_size
        window=_num(j, "attention_window_size", where, 2048),
        max_seq_len=_num(j, "max_position_embeddings", where, 8192),
        query_scale=float(head_dim), rope_base=base, rope_scaling=scaling, rotary_fraction=fraction,
        final_softcap=_num(j, "logits_soft_cap", where, 30.0, kind=float, minimum=0, positive=True),
        post_norms=False, embed_scale_bf16=True,
        mlp_bias=True, attn_out_bias=True, lru_width=_num(j, "lru_width", where, d),
        conv_width=_num(j, "conv1d_width", where, 4), **common,
    )  # fmt: skip


def _attention_kinds(j: dict[str, Any], where: str, mt: str, n: int) -> tuple[str, ...]:
    """Layer kinds of Gemma 2 / 3: HF's layer_types when given, else each family's pattern."""
    if "layer_types" in j and j["layer_types"] is not None:
        _need(isinstance(j["layer_types"], list), where, f"layer_types must be a list, got {j['layer_types']!r}")
        bad = [t for t in j["layer_types"] if not isinstance(t, str) or t not in _HF_KIND]
        _need(not bad, where, f"layer_types has unknown entries {bad}")
        _need(
            len(j["layer_types"]) == n,
            where,
            f"layer_types has {len(j['layer_types'])} entries, num_hidden_layers is {n}",
        )
        return tuple(_HF_KIND[t] for t in j["layer_types"])
    if mt == "gemma2":
        return gemma2_kinds(n)
    return gemma3_kinds(n, _num(j, "sliding_window_pattern", where, _num(j, "_sliding_window_pattern", where, 6)))

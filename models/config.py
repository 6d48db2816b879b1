"""One frozen, validated configuration for all four Gemma families.

Every field changes what a model computes (tests/models/test_config_fields.py proves it), except
``family``, which names the checkpoint layout and tokenizer conventions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["ModelConfig", "FAMILIES", "LAYER_KINDS"]

FAMILIES = ("gemma2", "gemma3", "recurrentgemma", "embeddinggemma")
LAYER_KINDS = ("global", "local", "recurrent")
_ATTN_KINDS = ("global", "local")
POOLINGS = ("mean", "first", "last")


@dataclass(frozen=True)
class ModelConfig:
    family: str  # one of FAMILIES: selects the checkpoint key map and tokenizer conventions
    vocab_size: int  # rows of the (tied) embedding table
    d_model: int  # residual width
    layer_kinds: tuple[str, ...]  # one entry per layer: global | local | recurrent
    num_heads: int  # query heads (and RG-LRU gate blocks in RecurrentGemma)
    num_kv_heads: int  # key/value heads (GQA / MQA)
    head_dim: int
    ffn_dim: int  # width of each of the GeGLU gate and up projections
    window: int  # local attention window: keys visible to a causal query, self included
    max_seq_len: int  # longest sequence the model accepts (trained context)
    query_scale: float  # query_pre_attn_scalar: scores are q.k * query_scale**-0.5
    rope_base: dict[str, float]  # RoPE base per attention kind
    rope_scaling: dict[str, float] = field(default_factory=dict)  # linear position divisor per kind
    rotary_fraction: float = 1.0  # fraction of head_dim that RoPE rotates (0.5 in Griffin)
    attn_softcap: float | None = None  # Gemma 2: scores <- c*tanh(scores/c) before the mask
    final_softcap: float | None = None  # logits <- c*tanh(logits/c)
    qk_norm: bool = False  # Gemma 3: RMSNorm(head_dim) on q and k before RoPE
    post_norms: bool = True  # Gemma 2/3 sandwich norms after attention and MLP
    causal: bool = True  # False: bidirectional encoder (EmbeddingGemma)
    norm_eps: float = 1e-6
    tie_embeddings: bool = True  # output head shares the embedding table
    embed_scale_bf16: bool = False  # HF RecurrentGemma keeps sqrt(d_model) as a bf16 scalar
    mlp_bias: bool = False  # Griffin's MLP linears have biases
    attn_out_bias: bool = False  # Griffin's attention output projection has a bias
    lru_width: int = 0  # Griffin recurrent width (0 when there are no recurrent layers)
    conv_width: int = 4  # Griffin depthwise temporal conv width
    lru_c: float = 8.0  # RG-LRU: log a = -c * r * softplus(Lambda)
    pooling: str = "mean"  # encoder pooling over real tokens: mean | first | last
    dense_dims: tuple[int, ...] = ()  # encoder projections after pooling (no bias, identity)
    matryoshka_dims: tuple[int, ...] = ()  # encoder output sizes allowed by truncation

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_kinds", tuple(self.layer_kinds))
        object.__setattr__(self, "dense_dims", tuple(self.dense_dims))
        object.__setattr__(self, "matryoshka_dims", tuple(self.matryoshka_dims))
        object.__setattr__(self, "rope_base", dict(self.rope_base))
        object.__setattr__(self, "rope_scaling", dict(self.rope_scaling))
        self._validate()

    # -- validation -------------------------------------------------------------------------
    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig: {msg}")

        need(self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "d_model", "num_heads", "num_kv_heads", "head_dim", "ffn_dim"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(len(self.layer_kinds) > 0, "layer_kinds must name at least one layer")
        bad = [k for k in self.layer_kinds if k not in LAYER_KINDS]
        need(not bad, f"layer_kinds entries must be in {LAYER_KINDS}, got {bad}")
        need(
            self.num_heads % self.num_kv_heads == 0,
            f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})",
        )
        need(self.window > 0, f"window must be > 0, got {self.window}")
        need(self.max_seq_len > 0, f"max_seq_len must be > 0, got {self.max_seq_len}")
        need(self.query_scale > 0, f"query_scale must be > 0, got {self.query_scale}")
        for kind in set(self.layer_kinds) & set(_ATTN_KINDS):
            need(kind in self.rope_base, f"rope_base has no entry for layer kind {kind!r}")
        for kind, f in self.rope_scaling.items():
            need(kind in _ATTN_KINDS and f > 0, f"rope_scaling[{kind!r}] must be > 0 for an attention kind")
        need(0 < self.rotary_fraction <= 1, f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        rot = int(self.head_dim * self.rotary_fraction)
        need(rot % 2 == 0 and rot > 0, f"head_dim*rotary_fraction must be even and > 0, got {rot}")
        for name in ("attn_softcap", "final_softcap"):
            v = getattr(self, name)
            need(v is None or v > 0, f"{name} must be None or > 0, got {v}")
        if "recurrent" in self.layer_kinds:
            need(self.lru_width > 0, "lru_width must be > 0 when a layer is recurrent")
            need(self.lru_width % self.num_heads == 0, "lru_width must be a multiple of num_heads")
            need(self.conv_width >= 1, f"conv_width must be >= 1, got {self.conv_width}")
            need(self.lru_c > 0, f"lru_c must be > 0, got {self.lru_c}")
        if not self.causal:
            need(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
            need("recurrent" not in self.layer_kinds, "an encoder (causal=False) cannot be recurrent")
            out = self.dense_dims[-1] if self.dense_dims else self.d_model
            need(
                all(0 < d <= out for d in self.matryoshka_dims),
                f"matryoshka_dims {self.matryoshka_dims} must lie in (0, {out}]",
            )

    # -- derived ----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def embed_dim(self) -> int:
        """Size of the encoder's output embedding (after the dense projections)."""
        return self.dense_dims[-1] if self.dense_dims else self.d_model

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("layer_kinds", "dense_dims", "matryoshka_dims"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

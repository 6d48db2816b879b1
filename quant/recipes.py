"""Named quantization recipes: plain data, serialised into the manifest (never into file names).

``fp32``, ``fp16`` (fp16 weights, fp32 compute), ``int8`` (int8 weights per channel), ``int4`` (int4
weights in groups), ``8da4w`` (int8 dynamic activations, int4 grouped weights), ``8da8w`` (int8
dynamic activations, int8 weights per channel), each optionally ``+emb8`` / ``+emb4`` (the embedding
table, and with it the tied output head, quantized per row / in groups). Not every backend realises
every recipe: each backend's ``check_supported`` refuses the others before any work is done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gemma_edge.models.errors import InputError

__all__ = ["Recipe", "parse_recipe", "RECIPES"]

RECIPES = ("fp32", "fp16", "int8", "int4", "8da4w", "8da8w")
_EMB = {"emb8": 8, "emb4": 4}


@dataclass(frozen=True)
class Recipe:
    name: str  # canonical spec, e.g. "8da4w+emb4"
    weight_bits: int | None  # linear weights: None (fp32), 16 (fp16), 8 or 4 (int)
    dynamic_activations: bool  # int8 dynamic activation quantization (8da4w, 8da8w)
    group_size: int  # int4 weight groups along the input dim; 0 = per channel
    embedding_bits: int | None  # None, 8 or 4
    ptq: str = "rtn"  # how 4-bit codes are chosen: rtn | mse | gptq (quant/ptq.py); rtn without 4-bit parts

    @property
    def base(self) -> str:
        """The weight part of the name ("8da4w" of "8da4w+emb4"), which thresholds and handlers key on."""
        return self.name.split("+")[0]

    @property
    def has_int4(self) -> bool:
        return self.weight_bits == 4 or self.embedding_bits == 4

    @property
    def is_quantized(self) -> bool:
        return self.weight_bits is not None or self.embedding_bits is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(**d)


def parse_recipe(spec: str, group_size: int = 32, ptq: str = "gptq") -> Recipe:
    """``"8da4w+emb4"`` -> Recipe. The group size applies to int4 weights (and int4 embeddings);
    ``ptq`` picks how their codes are chosen (quant/ptq.py: rtn, mse, gptq)."""
    from .ptq import METHODS

    if ptq not in METHODS:
        raise InputError(f"unknown PTQ method {ptq!r}; known: {', '.join(METHODS)}")
    base, *extras = spec.split("+")
    if base not in RECIPES:
        raise InputError(f"unknown quantization recipe {spec!r}: base must be one of {RECIPES}")
    bad = [e for e in extras if e not in _EMB]
    if bad or len(extras) > 1:
        raise InputError(f"unknown quantization recipe {spec!r}: optional suffix is +emb8 or +emb4")
    if group_size < 0:
        raise InputError(f"group_size must be >= 0, got {group_size}")
    bits = {"fp32": None, "fp16": 16, "int8": 8, "int4": 4, "8da4w": 4, "8da8w": 8}[base]
    emb = _EMB[extras[0]] if extras else None
    int4 = bits == 4 or emb == 4
    if int4 and group_size == 0:
        raise InputError(f"recipe {spec}: int4 weights need a group size > 0 (got 0)")
    return Recipe(
        name=spec,
        weight_bits=bits,
        dynamic_activations=base in ("8da4w", "8da8w"),
        group_size=group_size if int4 else 0,
        embedding_bits=emb,
        ptq=ptq if int4 else "rtn",
    )

"""Apply a Recipe to a built model with torchao, in the form ExecuTorch's XNNPACK backend runs."""

from __future__ import annotations

import torch
from torch import nn

from gemma_edge.models.errors import InputError

from .recipes import Recipe

__all__ = ["quantize_for_executorch"]


def _linear_filter(group_size: int):
    def keep(m: nn.Module, fqn: str) -> bool:
        return isinstance(m, nn.Linear) and (group_size == 0 or m.in_features % group_size == 0)

    return keep


@torch.no_grad()
def quantize_for_executorch(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Quantize ``model`` in place: linears per the recipe, then the embedding if asked.

    With embedding quantization the caller unties the head first (models.untie_head), so the head
    is quantized as a linear (with the linears, or like the table when linears stay fp32).
    """
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    gran = lambda gs: PerAxis(0) if gs == 0 else PerGroup(gs)  # noqa: E731
    if recipe.weight_bits is not None:
        gs = recipe.group_size if recipe.weight_bits == 4 else 0
        wdtype = torch.int4 if recipe.weight_bits == 4 else torch.int8
        n_linear = sum(_linear_filter(gs)(m, "") for m in model.modules())
        if n_linear == 0:
            raise InputError(f"recipe {recipe.name}: no linear layer has in_features divisible by group size {gs}")
        if recipe.dynamic_activations:
            cfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=wdtype, weight_granularity=gran(gs))
        else:
            cfg = IntxWeightOnlyConfig(weight_dtype=wdtype, granularity=gran(gs))
        quantize_(model, cfg, filter_fn=_linear_filter(gs))
    if recipe.embedding_bits is not None:
        gs = recipe.group_size if recipe.embedding_bits == 4 else 0
        wdtype = torch.int4 if recipe.embedding_bits == 4 else torch.int8
        emb_cfg = IntxWeightOnlyConfig(weight_dtype=wdtype, granularity=gran(gs))
        quantize_(model, emb_cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))
        head = getattr(model, "lm_head", None)
        if recipe.weight_bits is None and isinstance(head, nn.Linear):  # the head follows the table
            quantize_(model, emb_cfg, filter_fn=lambda m, fqn: m is head)
    return model

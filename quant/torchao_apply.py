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


def _with_scales(model: nn.Module, scales: dict, dynamic: bool) -> set[int]:
    """Give each module in ``scales`` its int4 weight with those scales (chosen by quant/ptq.py on
    XNNPACK's grid: codes -8..7, bf16-exact scales); return the ids of the modules done."""
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from torchao.quantization.quant_primitives import MappingType

    done = set()
    for m in model.modules():
        s = scales.get(m)
        if s is None:
            continue
        gs = m.weight.shape[1] // s.shape[1]
        act = "int8_asym_per_token" if dynamic and isinstance(m, nn.Linear) else None
        w = IntxUnpackedToInt8Tensor.from_hp(
            m.weight.detach(), (1, gs), torch.int4, mapping_type=MappingType.SYMMETRIC,
            activation_quantization=act, intx_choose_qparams_algorithm=None,
            custom_scale=s.float(), custom_zero_point=torch.zeros(s.shape, dtype=torch.int8),
        )  # fmt: skip
        m.weight = nn.Parameter(w, requires_grad=False)
        done.add(id(m))
    return done


@torch.no_grad()
def quantize_for_executorch(model: nn.Module, recipe: Recipe, scales: dict | None = None) -> nn.Module:
    """Quantize ``model`` in place: linears per the recipe, then the embedding if asked.

    With embedding quantization the caller unties the head first (models.untie_head), so the head
    is quantized as a linear (with the linears, or like the table when linears stay fp32).
    ``scales`` (module -> int4 scales from quant/ptq.py) replace torchao's max rule where given;
    otherwise int4 scales are rounded to bf16 as XNNPACK's blockwise kernels store them, so the eager
    model computes what the kernel does.
    """
    scales = scales or {}
    done = _with_scales(model, scales, recipe.dynamic_activations)
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    gran = lambda gs: PerAxis(0) if gs == 0 else PerGroup(gs)  # noqa: E731
    if recipe.weight_bits is not None:
        gs = recipe.group_size if recipe.weight_bits == 4 else 0
        wdtype = torch.int4 if recipe.weight_bits == 4 else torch.int8
        keep = _linear_filter(gs)
        n_linear = sum(keep(m, "") for m in model.modules())
        if n_linear == 0:
            raise InputError(f"recipe {recipe.name}: no linear layer has in_features divisible by group size {gs}")
        sdt = {"weight_scale_dtype": torch.bfloat16} if wdtype == torch.int4 else {}
        if recipe.dynamic_activations:
            cfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=wdtype, weight_granularity=gran(gs), **sdt)
        else:
            cfg = IntxWeightOnlyConfig(weight_dtype=wdtype, granularity=gran(gs), **sdt)
        quantize_(model, cfg, filter_fn=lambda m, fqn: keep(m, fqn) and id(m) not in done)
    if recipe.embedding_bits is not None:
        gs = recipe.group_size if recipe.embedding_bits == 4 else 0
        wdtype = torch.int4 if recipe.embedding_bits == 4 else torch.int8
        emb_cfg = IntxWeightOnlyConfig(weight_dtype=wdtype, granularity=gran(gs))
        quantize_(model, emb_cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Embedding) and id(m) not in done)
        head = getattr(model, "lm_head", None)
        if recipe.weight_bits is None and isinstance(head, nn.Linear) and id(head) not in done:
            quantize_(model, emb_cfg, filter_fn=lambda m, fqn: m is head)  # the head follows the table
    return model

"""The model as XNNPACK lowers it: matmul-form norms, fused projections, torchao quantization (or
our kernel's int4 linears), one stored table for the lookup and the head when --ops fused."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge import quant
from gemma_edge.models import fuse_projections, untie_head, use_custom_ops
from gemma_edge.models.errors import ExportError
from gemma_edge.models.layers import RMSNorm
from gemma_edge.quant import Recipe, ptq, quantize_for_executorch

from .table import kernel_linears, share_table


class MatmulRMSNorm(nn.Module):
    """RMSNorm with mean(x^2) as a product with a constant 1/d vector: XNNPACK runs matmuls but not
    ``mean.dim``, so the plain form splits every layer into several delegate partitions."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("inv_d", torch.full((1, norm.weight.shape[0]), 1.0 / norm.weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ms = F.linear(xf * xf, self.inv_d)  # (..., 1) = mean(x^2)
        return (xf * torch.rsqrt(ms + self.eps) * (1.0 + self.weight.float())).type_as(x)


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RMSNorm):
            setattr(module, name, MatmulRMSNorm(child))
        else:
            _swap_norms(child)


@quant.register("executorch")
def _quantize(model: nn.Module, recipe: Recipe, calibration=None, shared: bool = False) -> dict:
    """ExecuTorch's quantization handler (quant.apply): 4-bit codes by ``recipe.ptq`` on XNNPACK's
    grid (8da4w, through torchao) or our kernel's (weight-only int4 linears, KernelLinear); with
    ``shared``, one stored table for the lookup and gemma_edge::table_head (table.py)."""
    table_scales = None
    if recipe.is_quantized:
        weight_only = recipe.weight_bits == 4 and not recipe.dynamic_activations  # int4: our kernel's linears
        grid = ptq.GRIDS["executorch_kernel" if weight_only else "executorch"]
        scales = ptq.optimize(model, recipe, grid, calibration) if recipe.has_int4 else {}
        table_scales = scales.pop(model.backbone.embed, None) if shared else None  # the table is ours, not torchao's
        rest = dataclasses.replace(recipe, embedding_bits=None) if shared else recipe
        if weight_only:
            kernel_linears(model, recipe.group_size, scales, grid)
            rest = dataclasses.replace(rest, weight_bits=None)  # torchao: at most the (untied) table
        quantize_for_executorch(model, rest, scales)
    if shared:
        # 8da4w: the head's activations are int8 too (a 4-bit table only; table.py).
        share_table(model, recipe.embedding_bits, recipe.group_size, table_scales, recipe.dynamic_activations)
    return {}


def prepare(model: nn.Module, recipe: Recipe, ops: str, copy_model: bool = True, calibration=None) -> nn.Module:
    """The model (a private copy unless ``copy_model`` is False) quantized per the recipe (4-bit
    codes chosen by ``recipe.ptq`` on XNNPACK's grid, calibrated on the ids ``calibration``), routed
    through the custom ops if fused, with XNNPACK-friendly norms."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    _swap_norms(model)
    if ops != "fused" or (recipe.weight_bits == 4 and not recipe.dynamic_activations):
        # One linear for q/k/v and one for gate/up. Fused ops with XNNPACK's linears keep them apart:
        # the split after a fused linear would be a portable op between two delegate calls. Our
        # kernel's int4 linears are operator calls anyway, and fewer of them is better.
        fuse_projections(model)
    shared = ops == "fused" and model.config.causal and getattr(model, "lm_head", 1) is None
    if recipe.embedding_bits is not None and not shared:
        untie_head(model)  # stock ops: the head is an XNNPACK linear, which keeps its own copy
    quant.apply(model, recipe, "executorch", calibration=calibration, shared=shared)
    if ops == "fused":
        use_custom_ops(model)
    return model


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    """Refuse recipes this backend cannot realise correctly, before any work is done."""
    if recipe.weight_bits == 16:
        raise ExportError(
            f"recipe {recipe.name} on executorch: fp16 weights are a LiteRT recipe here (XNNPACK's fp16 path "
            "computes in fp16 too); use fp32, 8da8w or 8da4w"
        )
    if recipe.weight_bits is None and recipe.embedding_bits is not None:
        raise ExportError(
            f"recipe {recipe.name} on executorch: with fp32 linears the untied head of a quantized table would be a "
            "weight-only int linear, which XNNPACK mis-lowers (measured on the real Gemma 3 270M: KL 496 against "
            "eager); use int4 (--ops fused), 8da4w or 8da8w with the same +emb suffix"
        )
    if recipe.weight_bits == 4 and not recipe.dynamic_activations and ops != "fused":
        raise ExportError(
            f"recipe {recipe.name} on executorch: weight-only int4 linears run on gemma_edge's own kernel "
            "(XNNPACK has none with fp32 activations): use --ops fused, or 8da4w (int8 dynamic activations)"
        )
    if recipe.weight_bits == 8 and not recipe.dynamic_activations:
        raise ExportError(
            f"recipe {recipe.name} on executorch: weight-only int8 linears are mis-lowered by "
            "XNNPACK in executorch 1.5.1 with torchao 0.18 (its partitioner takes a dequantized weight with fp32 "
            "activations for a statically quantized linear; one linear, measured: max error ~1e3 against eager), "
            "and without XNNPACK torchao's dequantize_affine has no ExecuTorch kernel; use 8da8w (int8 weights), "
            "8da4w, or int4 with --ops fused"
        )

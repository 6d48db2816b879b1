"""The model as ONNX lowers it: one RMSNormalization per norm, fused projections, MatMulNBits-form
quantization, GroupQueryAttention / CausalConvWithState where --ops fused."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge import quant
from gemma_edge.models import fuse_projections
from gemma_edge.models.errors import ExportError
from gemma_edge.models.layers import RMSNorm
from gemma_edge.quant import Recipe

from ..backend import Prepared
from .stateful import use_stateful_ops


class FusedRMSNorm(nn.Module):
    """RMSNorm as ``F.rms_norm`` with the scale (1 + w) precomputed: one ONNX RMSNormalization node
    (opset 23) instead of six elementwise ones. Same math: x * rsqrt(mean(x^2) + eps) * (1 + w)."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.register_buffer("scale", 1.0 + norm.weight.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.scale.shape, self.scale, self.eps).type_as(x)


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RMSNorm):
            setattr(module, name, FusedRMSNorm(child))
        else:
            _swap_norms(child)


def gqa_fits(cfg) -> bool:
    """ONNX Runtime's GroupQueryAttention (with its rotary) takes head sizes that are multiples of
    16, causal attention only; elsewhere --ops fused keeps the portable attention."""
    return cfg.causal and cfg.head_dim % 16 == 0


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    if recipe.weight_bits == 16:
        raise ExportError(
            f"recipe {recipe.name} on onnx: fp16 weights are a LiteRT recipe here (MatMulNBits stores 4 or 8 "
            "bits); use fp32, int8, 8da8w, int4 or 8da4w"
        )
    if recipe.embedding_bits == 8:
        raise ExportError(
            f"recipe {recipe.name} on onnx: GatherBlockQuantized (ONNX Runtime's quantized embedding) takes "
            "4-bit tables only; use +emb4"
        )


def prepare(model: nn.Module, recipe: Recipe, ops: str, copy_model: bool = True, calibration=None) -> Prepared:
    """The model (a private copy unless ``copy_model`` is False) quantized per the recipe in
    MatMulNBits form (4-bit codes chosen by ``recipe.ptq`` on its grid, calibrated on the ids
    ``calibration``); the eager result is the lowering reference. Its notes hold the quantization
    layout, which the manifest records."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    _swap_norms(model)
    fuse_projections(model)  # one MatMul(NBits) for q/k/v and one for gate/up
    notes = quant.apply(model, recipe, "onnx", calibration=calibration)
    if ops == "fused" and model.config.causal:  # lower() trims the RoPE tables to max_seq_len
        use_stateful_ops(model, model.config.max_seq_len, attention=gqa_fits(model.config))
    return Prepared(model, notes)

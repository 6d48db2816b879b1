"""Build a model from a preset or a ModelConfig; switch it to the custom ops."""

from __future__ import annotations

import zlib

import torch
from torch import nn

from . import ops
from .attention import Attention, OpAttentionCore, set_core
from .config import ModelConfig
from .model import CausalLM, Encoder
from .presets import get_preset
from .recurrent import RGLRU, RecurrentBlock, conv_with_tail

__all__ = ["build", "use_custom_ops", "init_random_", "untie_head", "fuse_projections"]


def build(preset_or_config: str | ModelConfig, seed: int | None = None) -> nn.Module:
    """An eval-mode fp32 model with ``.config``; random weights when ``seed`` is given, else zeros."""
    cfg = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    model = (CausalLM if cfg.causal else Encoder)(cfg)
    if seed is not None:
        init_random_(model, seed)
    return model.eval()


@torch.no_grad()
def init_random_(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Random weights that exercise every parameter, norms and biases included.

    RG-LRU's Lambda is drawn so that a = exp(-softplus(Lambda)) lies in [0.9, 0.999], as Griffin
    initialises it (REFERENCE §2b).
    """
    for name, p in model.named_parameters():
        # Seeded per name: a parameter gets the same values whatever else the model holds.
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if name.endswith("a_param"):
            a = torch.empty(p.shape).uniform_(0.9, 0.999, generator=g)
            p.copy_(torch.log(torch.expm1(-torch.log(a))))  # softplus^-1(-log a)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@torch.no_grad()
def untie_head(model: nn.Module) -> nn.Module:
    """Give a tied causal LM its own output linear (a copy of the table), e.g. so the head can be
    quantized as a linear while the table is quantized as an embedding. Outputs are unchanged."""
    if getattr(model, "lm_head", None) is None and model.config.causal:
        emb = model.backbone.embed.weight
        model.lm_head = nn.Linear(emb.shape[1], emb.shape[0], bias=False)
        model.lm_head.weight.copy_(emb)
    return model


def use_custom_ops(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Route attention and RG-LRU through ``torch.ops.gemma_edge.*`` (for export), or (``enabled``
    False) every seam back to plain PyTorch."""
    set_core(model, OpAttentionCore() if enabled else None)
    for m in model.modules():
        if isinstance(m, RGLRU):
            m.scan = torch.ops.gemma_edge.rg_lru if enabled else ops.rg_lru_closed_form
        if isinstance(m, RecurrentBlock) and not enabled:
            m.conv = conv_with_tail
    return model


def _stack(parts: list[nn.Linear]) -> nn.Linear | None:
    """One linear computing ``cat([p(x) for p in parts], -1)`` (stacked rows); None if they differ in
    input size or in having a bias."""
    if len({p.in_features for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
        return None
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=parts[0].bias is not None)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused.requires_grad_(parts[0].weight.requires_grad)


def fuse_projections(model: nn.Module) -> int:
    """Fuse each attention's q/k/v and each MLP's gate/up linears into one (same outputs; row-wise
    quantization of the fused weight equals that of the parts). Fewer, larger matmuls run faster on
    a runtime's small-batch kernels. Returns the number of linears removed."""
    from .layers import GeGLU

    removed = 0
    for m in list(model.modules()):
        if isinstance(m, Attention) and m.qkv_proj is None and (f := _stack([m.q_proj, m.k_proj, m.v_proj])):
            m.qkv_proj, m.q_proj, m.k_proj, m.v_proj = f, None, None, None
            removed += 2
        elif isinstance(m, GeGLU) and m.gate_up_proj is None and (f := _stack([m.gate_proj, m.up_proj])):
            m.gate_up_proj, m.gate_proj, m.up_proj = f, None, None
            removed += 1
    return removed

"""SmoothQuant-style channel scaling (Xiao et al. 2022) folded into Gemma's pre-norms.

A linear whose input is quantized on the fly per row (LiteRT's dynamic-range int4 kernels) loses
the small channels of a row to the few large ones: Gemma's residual stream has channels hundreds of
times larger than the rest. Each input channel j of the linears after a pre-norm is divided by
s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) and the weights' column j multiplied by it; the
division folds exactly into the norm's scale ((1 + w_j) / s_j), so the fp32 model computes the same
function while both the activations and the weights quantize with less error (AWQ's observation).
Only where the norm feeds nothing else: the attention block's q/k/v (``pre_norm``) and the MLP's
gate/up (``pre_ffn_norm``); RecurrentGemma's temporal block is left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .ptq import run_chunks

__all__ = ["smooth_pre_norms"]

_CLAMP = (1e-2, 1e2)


def _inputs(block) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(norm, linears reading its output) pairs of one block that can be smoothed."""
    pairs = []
    t = block.temporal
    if hasattr(t, "q_proj") and t.q_proj is not None:  # attention, not fused yet
        pairs.append((block.pre_norm, [t.q_proj, t.k_proj, t.v_proj]))
    if block.mlp.gate_proj is not None:
        pairs.append((block.pre_ffn_norm, [block.mlp.gate_proj, block.mlp.up_proj]))
    return pairs


@torch.no_grad()
def smooth_pre_norms(model: nn.Module, ids: list[int], alpha: float = 0.5, chunk: int = 512) -> int:
    """Scale ``model``'s pre-norm / linear pairs in place from the activations of ``ids``; return the
    number of pairs scaled."""
    pairs = [p for blk in model.backbone.layers for p in _inputs(blk)]
    amax: dict[int, torch.Tensor] = {}

    def hook(i):
        def h(mod, args, out):
            v = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).float()
            amax[i] = v if i not in amax else torch.maximum(amax[i], v)

        return h

    handles = [norm.register_forward_hook(hook(i)) for i, (norm, _) in enumerate(pairs)]
    try:
        run_chunks(model, ids, chunk)
    finally:
        for h in handles:
            h.remove()
    for i, (norm, linears) in enumerate(pairs):
        a = amax[i].clamp(min=1e-5)
        w = torch.cat([lin.weight.float() for lin in linears]).abs().amax(0).clamp(min=1e-5)
        s = (a**alpha / w ** (1 - alpha)).clamp(*_CLAMP)
        norm.weight.copy_((1.0 + norm.weight.float()) / s - 1.0)
        for lin in linears:
            lin.weight.mul_(s[None, :].to(lin.weight.dtype))
    return len(pairs)

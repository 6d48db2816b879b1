"""Building blocks shared by the Gemma families: RMSNorm, GeGLU MLP, RoPE, the embedding scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "rms_norm", "GeGLU", "rope_inv_freq", "apply_rope", "embed_scale"]


class RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32 and cast back (REFERENCE §1b).

    Weights are stored zero-centred, as every Gemma checkpoint stores them.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with a zero-centred weight, in fp32 and cast back."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1.0 + weight.float())).type_as(x)


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)); biases only in Griffin (REFERENCE §1b, §2b)."""

    def __init__(self, d_model: int, ffn_dim: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=bias)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=bias)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=bias)
        self.gate_up_proj = None  # models.fuse_projections: gate and up as one linear (gate rows first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


def rope_inv_freq(head_dim: int, fraction: float, base: float, linear_scale: float) -> torch.Tensor:
    """Inverse frequencies over the rotated part of head_dim; linear scaling divides positions."""
    dim = int(head_dim * fraction)
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return inv / linear_scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (not interleaved) on the first ``rot`` channels of x.

    x: (B, H, T, D); cos/sin: (T, rot) computed in fp32 from positions (AttnContext.build).
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def embed_scale(d_model: int, dtype: torch.dtype, bf16: bool) -> torch.Tensor:
    """sqrt(d_model) as a scalar of the activation dtype (REFERENCE §1b: in bf16 it rounds).

    HF RecurrentGemma keeps the scalar in bf16 even for fp32 activations (its `normalizer`
    buffer); ``bf16=True`` reproduces that.
    """
    s = torch.tensor(math.sqrt(d_model), dtype=torch.bfloat16 if bf16 else torch.float32)
    return s.to(dtype)

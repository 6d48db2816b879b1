"""Griffin's recurrent block (REFERENCE §2b): gelu(linear_y) * RG-LRU(conv1d(linear_x))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import ModelConfig

__all__ = ["RGLRU", "RecurrentBlock", "conv_with_tail"]


def conv_with_tail(
    x: torch.Tensor,  # (B, T, L) channels last
    weight: torch.Tensor,  # (L, 1, w) depthwise, weight[:, 0, -1] on the current token
    bias: torch.Tensor,  # (L,)
    past: torch.Tensor,  # (B, w - 1, L): the last w - 1 inputs before the chunk
) -> tuple[torch.Tensor, torch.Tensor]:  # y (B, T, L), present (B, w - 1, L)
    """Griffin's causal depthwise conv1d with its tail as state."""
    T, width = x.shape[1], weight.shape[-1]
    full = torch.cat((past, x), dim=1)  # (B, w-1+T, L)
    w = weight[:, 0, :]  # (L, w)
    y = bias + sum(full[:, i : i + T] * w[:, i] for i in range(width))
    return y, full[:, full.shape[1] - (width - 1) :]


class RGLRU(nn.Module):
    """Real-gated linear recurrent unit; gate matrices are block-diagonal with num_heads blocks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H, bw = cfg.num_heads, cfg.lru_width // cfg.num_heads
        self.c = cfg.lru_c
        # The seam: the scan, with the signature of ops.rg_lru_reference. The plain one is loop-free so
        # a chunk of symbolic length exports; models.use_custom_ops swaps in torch.ops.gemma_edge.rg_lru
        # (its eager kernel is the sequential scan; tests hold the two to each other).
        self.scan = ops.rg_lru_closed_form
        self.a_param = nn.Parameter(torch.zeros(cfg.lru_width))
        self.gate_x_weight = nn.Parameter(torch.zeros(H, bw, bw))
        self.gate_x_bias = nn.Parameter(torch.zeros(H, bw))
        self.gate_a_weight = nn.Parameter(torch.zeros(H, bw, bw))
        self.gate_a_bias = nn.Parameter(torch.zeros(H, bw))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        args = (
            x,
            self.gate_x_weight,
            self.gate_x_bias,
            self.gate_a_weight,
            self.gate_a_bias,
            self.a_param,
            pos,
            h0,
            self.c,
        )
        return self.scan(*args)


class RecurrentBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, L = cfg.d_model, cfg.lru_width
        self.conv_width = cfg.conv_width
        self.linear_x = nn.Linear(d, L)
        self.linear_y = nn.Linear(d, L)
        self.linear_out = nn.Linear(L, d)
        # Depthwise conv in HF Conv1d layout (L, 1, width): weight[:, 0, -1] multiplies the current token.
        self.conv_weight = nn.Parameter(torch.zeros(L, 1, cfg.conv_width))
        self.conv_bias = nn.Parameter(torch.zeros(L))
        self.rg_lru = RGLRU(cfg)
        self.conv = conv_with_tail  # the seam (same signature): a backend may route it through an op

    def init_state(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.linear_x.out_features
        return (torch.zeros(batch, self.conv_width - 1, L, dtype=dtype), torch.zeros(batch, L, dtype=torch.float32))

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        pos: torch.Tensor,  # (T,)
        state: tuple[torch.Tensor, torch.Tensor] | None = None,  # conv tail (B, w-1, L), h (B, L) fp32
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B = x.shape[0]
        conv_tail, h0 = state if state is not None else self.init_state(B, x.dtype)
        # A sequence starting at position 0 never sees an earlier conv tail (the RG-LRU resets itself).
        conv_tail = torch.where(pos[0] == 0, torch.zeros_like(conv_tail), conv_tail)
        y = F.gelu(self.linear_y(x), approximate="tanh")
        u = self.linear_x(x)  # (B, T, L)
        conv, new_tail = self.conv(u, self.conv_weight, self.conv_bias, conv_tail)
        lru, h = self.rg_lru(conv, pos, h0)
        return self.linear_out(lru * y), (new_tail, h)

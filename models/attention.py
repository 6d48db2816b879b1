"""Attention for Gemma's global and local layers, with explicit static-shape caches.

Global layers keep a cache of ``max_seq_len`` slots indexed by absolute position. Local layers keep
a ring buffer of ``window`` slots (slot = position % window): a chunk attends to the ring as it was
before the chunk plus the chunk's own keys, so a prefill longer than the window is exact while the
state stays O(window).
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .config import ModelConfig
from .layers import RMSNorm, apply_rope, rope_inv_freq

__all__ = ["Attention", "ring_slot_positions"]


def ring_slot_positions(start: torch.Tensor, window: int) -> torch.Tensor:
    """Absolute position held by each ring slot before a chunk starting at ``start``; -1 if empty.

    Slot s holds the latest p < start with p % window == s.
    """
    s = torch.arange(window, device=start.device)
    # "+ window" keeps the dividend >= 0: ExecuTorch's portable int remainder follows C's sign rule.
    p = start - 1 - torch.remainder(start - 1 - s + window, window)
    return torch.where(p >= 0, p, torch.full_like(p, -1))


def _ring_update_index(start: torch.Tensor, T: int, window: int) -> torch.Tensor:
    """Where each ring slot's new content lies in cat(ring, chunk) after a chunk of T at ``start``.

    Slot s keeps the newest position p <= start + T - 1 with p % window == s: from the chunk (index
    window + p - start) when p >= start, else unchanged (index s). One gather of fixed size, for any
    T, with no data-dependent shapes.
    """
    s = torch.arange(window, device=start.device)
    last = start + T - 1
    p = last - torch.remainder(last - s + window, window)  # dividend >= 0, see ring_slot_positions
    return torch.where(p >= start, window + p - start, s)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.window if kind == "local" else 0
        self.scale = cfg.query_scale**-0.5
        self.softcap = cfg.attn_softcap or 0.0
        self.causal = cfg.causal
        self.use_custom_op = False  # set by models.use_custom_ops()
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.attn_out_bias)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        inv = rope_inv_freq(hd, cfg.rotary_fraction, cfg.rope_base[kind], cfg.rope_scaling.get(kind, 1.0))
        self.register_buffer("inv_freq", inv, persistent=False)

    def cache_len(self, max_seq_len: int) -> int:
        return min(self.window, max_seq_len) if self.window else max_seq_len

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        pos: torch.Tensor,  # (T,) absolute positions
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B, kvH, S, hd) each
        key_mask: torch.Tensor | None = None,  # (B, T) bool, False = padding (encoder)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, kvH, T, hd)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, pos, self.inv_freq), apply_rope(k, pos, self.inv_freq)

        new_cache = None
        if cache is None:
            keys, values = k, v
            k_pos = pos[None, :].expand(B, T)
            if key_mask is not None:
                k_pos = torch.where(key_mask, k_pos, torch.full_like(k_pos, -1))
        elif self.window:  # ring buffer of `window` slots
            ck, cv = cache
            W = ck.shape[2]
            keys, values = torch.cat((ck, k), dim=2), torch.cat((cv, v), dim=2)  # (B, kvH, W+T, hd)
            k_pos = torch.cat((ring_slot_positions(pos[0], W), pos))[None, :].expand(B, W + T)
            idx = _ring_update_index(pos[0], T, W)
            new_cache = (keys.index_select(2, idx), values.index_select(2, idx))
        else:  # global cache indexed by absolute position
            ck, cv = cache
            new_cache = (ck.index_copy(2, pos, k), cv.index_copy(2, pos, v))
            keys, values = new_cache
            S = ck.shape[2]
            k_pos = torch.arange(S, device=x.device)[None, :].expand(B, S)

        args = (q, keys, values, pos, k_pos, self.window, self.scale, self.softcap, self.causal)
        if self.use_custom_op:
            out = torch.ops.gemma_edge.sliding_window_attention(*args)
        else:
            out = ops.attention_reference(*args)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out), new_cache

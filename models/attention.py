"""Attention for Gemma's global and local layers, with explicit static-shape caches.

Global layers keep a cache of ``max_seq_len`` slots indexed by absolute position. Local layers keep
a ring buffer of ``window`` slots (slot = position % window): a chunk attends to the ring as it was
before the chunk plus the chunk's own keys, so a prefill longer than the window is exact while the
state stays O(window).

Everything that depends only on positions (RoPE tables, key positions, the mask, the ring's update
index) is built once per layer kind by ``AttnContext.build`` and shared by the layers of that kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .config import ModelConfig
from .layers import RMSNorm, apply_rope, rope_inv_freq

__all__ = ["Attention", "AttnContext", "ring_slot_positions", "cached_attention"]


def ring_slot_positions(start: torch.Tensor, window: int) -> torch.Tensor:
    """Absolute position held by each ring slot before a chunk starting at ``start``; -1 if empty.

    Slot s holds the latest p < start with p % window == s.
    """
    s = torch.arange(window, device=start.device, dtype=start.dtype)
    # "+ window" keeps the dividend >= 0: ExecuTorch's portable int remainder follows C's sign rule.
    p = start - 1 - torch.remainder(start - 1 - s + window, window)
    return torch.where(p >= 0, p, torch.full_like(p, -1))


def _ring_update_index(start: torch.Tensor, T: int, window: int) -> torch.Tensor:
    """Where each ring slot's new content lies in cat(ring, chunk) after a chunk of T at ``start``.

    Slot s keeps the newest position p <= start + T - 1 with p % window == s: from the chunk (index
    window + p - start) when p >= start, else unchanged (index s). One gather of fixed size, for any
    T, with no data-dependent shapes.
    """
    s = torch.arange(window, device=start.device, dtype=start.dtype)
    last = start + T - 1
    p = last - torch.remainder(last - s + window, window)  # dividend >= 0, see ring_slot_positions
    return torch.where(p >= start, window + p - start, s)


def ring_write_index(pos: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots, src) for writing a chunk at positions ``pos`` into a ring of ``window`` slots in place:
    ``ring.index_copy(2, slots, chunk.index_select(2, src))``.

    Entry j goes to slot pos[j] % window. When the chunk is longer than the ring, several entries
    share a slot; each then carries the newest of them (src), so the duplicates write equal values
    and the order of the writes does not matter.
    """
    T = pos.shape[0]
    j = torch.arange(T, device=pos.device, dtype=pos.dtype)
    src = j + window * torch.div(T - 1 - j, window, rounding_mode="floor")  # T - 1 - j >= 0
    return torch.remainder(pos, window), src


@torch.library.custom_op("gemma_edge::cached_attention", mutates_args=())
def cached_attention(
    q: torch.Tensor,  # (B, T, H * hd), before RoPE
    k: torch.Tensor,  # (B, T, kvH * hd), before RoPE
    v: torch.Tensor,  # (B, T, kvH * hd)
    past_k: torch.Tensor,  # (B, kvH, C, hd): a ring of C >= window slots (local) or max_seq_len slots
    past_v: torch.Tensor,
    pos: torch.Tensor,  # (T,) consecutive absolute positions of the chunk
    cos_table: torch.Tensor,  # (L, rot / 2) cos(p * inv_freq) for every position p < L
    sin_table: torch.Tensor,
    num_heads: int,
    window: int,  # 0 = global
    scale: float,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # out (B, T, H * hd), present_k, present_v
    """Causal attention that owns RoPE and its cache update: rotate, write the chunk, attend.

    A runtime may keep the cache in its own layout (ONNX Runtime's GroupQueryAttention, which this
    op lowers to, does); the layout here is the ring / position-indexed one of ``Attention``.
    """
    B, T, _ = q.shape
    kvH, C, hd = past_k.shape[1], past_k.shape[2], past_k.shape[3]
    half = torch.cat((cos_table[pos], cos_table[pos]), -1), torch.cat((sin_table[pos], sin_table[pos]), -1)
    q = apply_rope(q.view(B, T, num_heads, hd).transpose(1, 2), *half)
    k = apply_rope(k.view(B, T, kvH, hd).transpose(1, 2), *half)
    v = v.view(B, T, kvH, hd).transpose(1, 2)
    if window:
        k_pos = torch.cat((ring_slot_positions(pos[0], C), pos))
        keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        idx = _ring_update_index(pos[0], T, C)
        present_k, present_v = keys.index_select(2, idx), values.index_select(2, idx)
    else:
        present_k, present_v = past_k.index_copy(2, pos, k), past_v.index_copy(2, pos, v)
        keys, values, k_pos = present_k, present_v, torch.arange(C, dtype=pos.dtype)
    k_pos = k_pos[None, :].expand(B, -1)
    out = ops.attention_reference(q, keys, values, pos, k_pos, window, scale, softcap, True)
    return out.transpose(1, 2).reshape(B, T, num_heads * hd), present_k, present_v


@cached_attention.register_fake
def _(q, k, v, past_k, past_v, pos, cos_table, sin_table, num_heads, window, scale, softcap):
    return torch.empty_like(q), torch.empty_like(past_k), torch.empty_like(past_v)


@dataclass
class AttnContext:
    """Per-kind, per-call tensors shared by every attention layer of that kind."""

    pos: torch.Tensor  # (T,) query positions
    cos: torch.Tensor  # (T, rot)
    sin: torch.Tensor  # (T, rot)
    k_pos: torch.Tensor  # (B, S) key positions, -1 = not visible
    vis: torch.Tensor  # (B, 1, 1, T, S) mask
    ring_write: tuple[torch.Tensor, torch.Tensor] | None  # (slots, src) of ring_write_index (local layers)
    ring_pos: torch.Tensor | None = None  # (B, W) positions held by the ring slots before the chunk
    cos_table: torch.Tensor | None = None  # (L, rot / 2) for ops that apply RoPE themselves
    sin_table: torch.Tensor | None = None

    @staticmethod
    def build(inv_freq, pos, batch: int, window: int, causal: bool, cache_len: int | None, key_mask=None):
        T = pos.shape[0]
        freqs = pos.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, rot/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        ring_write = ring_pos = None
        if cache_len is None:  # attend within the chunk only
            k_pos = pos[None, :].expand(batch, T)
            if key_mask is not None:
                k_pos = torch.where(key_mask, k_pos, torch.full_like(k_pos, -1))
        elif window:  # ring buffer of `cache_len` (= window) slots, then the chunk
            ring = ring_slot_positions(pos[0], cache_len)
            k_pos = torch.cat((ring, pos))[None, :].expand(batch, cache_len + T)
            ring_write, ring_pos = ring_write_index(pos, cache_len), ring[None, :].expand(batch, cache_len)
        else:  # global cache indexed by position
            k_pos = torch.arange(cache_len, device=pos.device, dtype=pos.dtype)[None, :].expand(batch, cache_len)
        vis = ops.visible_mask(pos, k_pos, window, causal)
        return AttnContext(pos, emb.cos(), emb.sin(), k_pos, vis, ring_write, ring_pos)


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
        self.op_impl = None  # a backend's stand-in for the op (same signature), e.g. a named composite
        self.use_cached_op = False  # set by models.use_stateful_ops(): the op updates the cache too
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.attn_out_bias)
        self.qkv_proj = None  # a backend may fuse q/k/v into one linear (rows of q, then k, then v)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None

    @staticmethod
    def inv_freq(cfg: ModelConfig, kind: str) -> torch.Tensor:
        return rope_inv_freq(cfg.head_dim, cfg.rotary_fraction, cfg.rope_base[kind], cfg.rope_scaling.get(kind, 1.0))

    def cache_len(self, max_seq_len: int, ring_extra: int = 0) -> int:
        """Cache slots: max_seq_len for a global layer; window (+ ``ring_extra`` spare slots, which
        some runtimes' cache managers allocate) for a local one. Any ring of >= window slots is exact."""
        return min(self.window + ring_extra, max_seq_len) if self.window else max_seq_len

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        ctx: AttnContext,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B, kvH, S, hd) each
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        if self.use_cached_op and cache is not None and self.causal:
            return self._cached_forward(x, ctx, cache)
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, kvH, T, hd)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)

        new_cache = out = None
        if cache is None:
            keys, values = k, v
        elif self.window:  # ring: attend to (ring before the chunk, chunk), then write the chunk in place
            slots, src = ctx.ring_write
            if self.use_custom_op and self.op_impl is None and self.causal:  # the kernel reads both, no copy
                out, k_rows, v_rows = torch.ops.gemma_edge.ring_attention(
                    q, k, v, cache[0], cache[1], ctx.pos, ctx.ring_pos, src, self.window, self.scale, self.softcap
                )
            else:
                keys, values = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)  # (B, kvH, W+T, hd)
                k_rows, v_rows = k.index_select(2, src), v.index_select(2, src)
            new_cache = (cache[0].index_copy(2, slots.long(), k_rows), cache[1].index_copy(2, slots.long(), v_rows))
        else:  # global cache indexed by absolute position
            new_cache = (cache[0].index_copy(2, ctx.pos.long(), k), cache[1].index_copy(2, ctx.pos.long(), v))
            keys, values = new_cache

        if out is None:  # (ring_attention above already attended)
            out = self._attend(q, keys, values, ctx)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out), new_cache

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        if self.op_impl is not None:
            return self.op_impl(q, keys, values, ctx.pos, ctx.k_pos, self.window, self.scale, self.softcap, self.causal)
        if self.use_custom_op:
            return torch.ops.gemma_edge.sliding_window_attention(
                q, keys, values, ctx.pos, ctx.k_pos, self.window, self.scale, self.softcap, self.causal
            )
        return ops.masked_attention(q, keys, values, ctx.vis, self.scale, self.softcap)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projections (B, T, heads * hd): one fused linear where a backend set ``qkv_proj``."""
        if self.qkv_proj is not None:
            kv = self.num_kv_heads * self.head_dim
            return self.qkv_proj(x).split([self.num_heads * self.head_dim, kv, kv], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _cached_forward(self, x: torch.Tensor, ctx: AttnContext, cache: tuple[torch.Tensor, torch.Tensor]):
        """The same attention through ``gemma_edge::cached_attention`` (RoPE and cache update inside)."""
        B, T, _ = x.shape
        q, k, v = self.project(x)  # (B, T, heads * hd)
        if self.q_norm is not None:
            q = self.q_norm(q.view(B, T, self.num_heads, self.head_dim)).reshape(B, T, -1)
            k = self.k_norm(k.view(B, T, self.num_kv_heads, self.head_dim)).reshape(B, T, -1)
        out, present_k, present_v = torch.ops.gemma_edge.cached_attention(
            q, k, v, cache[0], cache[1], ctx.pos, ctx.cos_table, ctx.sin_table, self.num_heads, self.window,
            self.scale, self.softcap,
        )  # fmt: skip
        return self.o_proj(out), (present_k, present_v)

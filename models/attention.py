"""Attention for Gemma's global and local layers, with explicit static-shape caches.

Global layers keep a cache of ``max_seq_len`` slots indexed by absolute position. Local layers keep
a ring buffer of ``window`` slots (slot = position % window): a chunk attends to the ring as it was
before the chunk plus the chunk's own keys, so a prefill longer than the window is exact while the
state stays O(window).

Everything that depends only on positions (RoPE tables, key positions, the mask, the ring's update
index) is built once per layer kind by ``AttnContext.build`` and shared by the layers of that kind.

One seam: between its projections and its output projection, ``Attention`` hands q, k, v to its
``core`` (an ``AttentionCore``: RoPE, the cache update, the attention itself). A backend that
computes those differently (through its runtime's fused kernel, a named composite, an op that owns
the cache) installs a subclass from its own package with ``set_core``; the model never asks which
backend it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .config import ModelConfig
from .layers import RMSNorm, apply_rope, rope_inv_freq

__all__ = [
    "Attention", "AttentionCore", "OpAttentionCore", "AttnContext", "ring_slot_positions", "ring_update_index",
    "set_core",
]  # fmt: skip


def ring_slot_positions(start: torch.Tensor, window: int) -> torch.Tensor:
    """Absolute position held by each ring slot before a chunk starting at ``start``; -1 if empty.

    Slot s holds the latest p < start with p % window == s.
    """
    s = torch.arange(window, device=start.device, dtype=start.dtype)
    # "+ window" keeps the dividend >= 0: some runtimes' integer remainder follows C's sign rule.
    p = start - 1 - torch.remainder(start - 1 - s + window, window)
    return torch.where(p >= 0, p, torch.full_like(p, -1))


def ring_update_index(start: torch.Tensor, T: int, window: int) -> torch.Tensor:
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
    cache_len: int | None = None  # slots of this kind's caches (None: no cache, attend within the chunk)
    cache_src: torch.Tensor | None = None  # (T,) the chunk row each global cache write takes (OpAttentionCore)
    ring_after: AttnContext | None = None  # the ring's key positions and mask after a write-first core's write

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
        return AttnContext(pos, emb.cos(), emb.sin(), k_pos, vis, ring_write, ring_pos, cache_len=cache_len)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` (a KV cache may be kept in fp16); no op at all when it already is."""
    return x if x.dtype == dtype else x.to(dtype)


class AttentionCore:
    """RoPE, cache update and attention of projected q, k, v (B, T, heads * hd) -> (B, T, H * hd).

    Stateless, so one instance may serve every layer. Subclasses override a step: ``attend`` (the
    softmax attention over keys at known positions), ``ring`` (a local layer's keys and values and
    its ring write), ``write`` (a cache update), ``extend_context`` (extra per-kind tensors) or the
    whole call.
    """

    def extend_context(self, ctx: AttnContext, inv_freq: torch.Tensor) -> None:
        """Add what this core needs to the per-kind context (once per kind, before any layer runs)."""

    def __call__(self, layer: Attention, q, k, v, ctx: AttnContext, cache):
        B, T, _ = q.shape
        q = q.view(B, T, layer.num_heads, layer.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, layer.num_kv_heads, layer.head_dim).transpose(1, 2)  # (B, kvH, T, hd)
        v = v.view(B, T, layer.num_kv_heads, layer.head_dim).transpose(1, 2)
        if layer.q_norm is not None:
            q, k = layer.q_norm(q), layer.k_norm(k)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)

        new_cache = out = None
        if cache is None:
            keys, values = k, v
        elif layer.window:  # ring: attend to (ring before the chunk, chunk), then write the chunk in place
            out, keys, values, new_cache = self.ring(layer, q, k, v, cache, ctx)
        else:  # global cache indexed by absolute position (the cache may be fp16: rows rounded on write)
            k_in, v_in = _as(k, cache[0].dtype), _as(v, cache[1].dtype)
            new_cache = (self.write(cache[0], ctx.pos, k_in, True), self.write(cache[1], ctx.pos, v_in, True))
            keys, values = new_cache

        if out is None:  # (a ring that attends already did)
            out = self.attend(layer, q, keys, values, ctx)
        return out.transpose(1, 2).reshape(B, T, layer.num_heads * layer.head_dim), new_cache

    def write(self, cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, contiguous: bool) -> torch.Tensor:
        """``cache`` (B, kvH, S, hd) with ``rows`` (B, kvH, T, hd) at ``slots`` (T,) of its sequence axis.
        ``contiguous``: the slots are known to run slots[0], slots[0] + 1, ... (a global cache's chunk
        positions, a one-row ring write), so a runtime may take the write as one slice update."""
        return cache.index_copy(2, slots.long(), rows)

    def ring(self, layer: Attention, q, k, v, cache, ctx: AttnContext):
        """(out or None, keys, values, new cache) of a local layer: it attends to the ring before the
        chunk, then the chunk (ctx.k_pos, ctx.vis), and the chunk's rows are written to their slots."""
        slots, src = ctx.ring_write
        keys = torch.cat((_as(cache[0], k.dtype), k), dim=2)  # (B, kvH, W+T, hd)
        values = torch.cat((_as(cache[1], v.dtype), v), dim=2)
        k_rows, v_rows = _as(k.index_select(2, src), cache[0].dtype), _as(v.index_select(2, src), cache[1].dtype)
        one = k.shape[2] == 1
        return None, keys, values, (self.write(cache[0], slots, k_rows, one), self.write(cache[1], slots, v_rows, one))

    def attend(self, layer: Attention, q, keys, values, ctx: AttnContext) -> torch.Tensor:  # (B, H, T, hd)
        return ops.masked_attention(q, keys, values, ctx.vis, layer.scale, layer.softcap)


class OpAttentionCore(AttentionCore):
    """The same attention through ``torch.ops.gemma_edge``. A causal layer with a cache takes one
    ``rope_cache_attention`` (q/k norm, RoPE, attention over cache and chunk, the rows to write); without
    a cache (an encoder, a cacheless call) ``sliding_window_attention`` over the chunk."""

    def extend_context(self, ctx: AttnContext, inv_freq: torch.Tensor) -> None:
        if ctx.cache_len is not None and ctx.ring_write is None:  # a global cache: every chunk row, in order
            ctx.cache_src = torch.arange(ctx.pos.shape[0], device=ctx.pos.device, dtype=ctx.pos.dtype)

    def __call__(self, layer: Attention, q, k, v, ctx: AttnContext, cache):
        if cache is None or not layer.causal:
            return super().__call__(layer, q, k, v, ctx, cache)
        if layer.window:
            (slots, src), held = ctx.ring_write, ctx.ring_pos
        else:
            slots, src, held = ctx.pos, ctx.cache_src, ctx.k_pos  # slot = position (rope_cache_attention skips stale)
        no_norm = q.new_empty(0)
        out, k_rows, v_rows = torch.ops.gemma_edge.rope_cache_attention(
            q, k, v, layer.q_norm.weight if layer.q_norm is not None else no_norm,
            layer.k_norm.weight if layer.k_norm is not None else no_norm, ctx.cos, ctx.sin, cache[0], cache[1],
            ctx.pos, held, src, layer.window, layer.scale, layer.softcap,
            layer.q_norm.eps if layer.q_norm is not None else 0.0,
        )  # fmt: skip
        return out, (cache[0].index_copy(2, slots.long(), k_rows), cache[1].index_copy(2, slots.long(), v_rows))

    def attend(self, layer, q, keys, values, ctx):
        return torch.ops.gemma_edge.sliding_window_attention(
            q, keys, values, ctx.pos, ctx.k_pos, layer.window, layer.scale, layer.softcap, layer.causal
        )


DEFAULT_CORE = AttentionCore()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.window if kind == "local" else 0
        self.scale = cfg.query_scale**-0.5
        self.softcap = cfg.attn_softcap or 0.0
        self.causal = cfg.causal
        self.core = DEFAULT_CORE  # the seam: see AttentionCore and set_core
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.attn_out_bias)
        self.qkv_proj = None  # models.fuse_projections: q/k/v as one linear (rows of q, then k, then v)
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
        out, new_cache = self.core(self, *self.project(x), ctx, cache)
        return self.o_proj(out), new_cache

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projections (B, T, heads * hd): one fused linear after ``fuse_projections``."""
        if self.qkv_proj is not None:
            kv = self.num_kv_heads * self.head_dim
            return self.qkv_proj(x).split([self.num_heads * self.head_dim, kv, kv], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


def set_core(model: nn.Module, core: AttentionCore | None) -> nn.Module:
    """Give every attention layer of ``model`` this core (None: the plain-PyTorch default)."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.core = core or DEFAULT_CORE
    return model

"""The ops that own their state update, as ONNX Runtime's kernels do, and the seams that route the
model through them (``--ops fused``): causal attention with a cache through
``gemma_edge::cached_attention`` (lowered to GroupQueryAttention: RoPE, window and cache update
inside) and Griffin's conv through ``gemma_edge::causal_conv`` (CausalConvWithState). Their eager
kernels are the model's own math (contrib.py translates them)."""

from __future__ import annotations

import torch
from torch import nn

from gemma_edge.models import ops
from gemma_edge.models.attention import Attention, AttentionCore, ring_slot_positions, ring_update_index, set_core
from gemma_edge.models.layers import apply_rope
from gemma_edge.models.recurrent import RecurrentBlock, conv_with_tail

__all__ = ["CachedAttentionCore", "use_stateful_ops", "uses_cached_attention", "cached_attention", "causal_conv"]


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

    The runtime keeps the cache in its own layout (GroupQueryAttention does); the layout here is the
    ring / position-indexed one of the model's ``Attention``.
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
        idx = ring_update_index(pos[0], T, C)
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


@torch.library.custom_op("gemma_edge::causal_conv", mutates_args=())
def causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """models.recurrent.conv_with_tail as one op (CausalConvWithState)."""
    y, present = conv_with_tail(x, weight, bias, past)
    return y, present.clone()


@causal_conv.register_fake
def _(x, weight, bias, past):
    return torch.empty_like(x), torch.empty_like(past)


class CachedAttentionCore(AttentionCore):
    """A causal layer with a cache goes through ``cached_attention`` (q/k norms first); the context
    carries whole RoPE tables for positions < ``table_len``. Otherwise the plain core's math."""

    def __init__(self, table_len: int) -> None:
        self.table_len = table_len

    def extend_context(self, ctx, inv_freq):
        angles = torch.arange(self.table_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
        ctx.cos_table, ctx.sin_table = angles.cos(), angles.sin()

    def __call__(self, layer, q, k, v, ctx, cache):
        if cache is None or not layer.causal:
            return super().__call__(layer, q, k, v, ctx, cache)
        B, T, _ = q.shape
        if layer.q_norm is not None:
            q = layer.q_norm(q.view(B, T, layer.num_heads, layer.head_dim)).reshape(B, T, -1)
            k = layer.k_norm(k.view(B, T, layer.num_kv_heads, layer.head_dim)).reshape(B, T, -1)
        out, present_k, present_v = torch.ops.gemma_edge.cached_attention(
            q, k, v, cache[0], cache[1], ctx.pos, ctx.cos_table, ctx.sin_table, layer.num_heads, layer.window,
            layer.scale, layer.softcap,
        )  # fmt: skip
        return out, (present_k, present_v)


def use_stateful_ops(model: nn.Module, max_seq_len: int, enabled: bool = True, attention: bool = True) -> nn.Module:
    """Route causal attention (unless ``attention`` is False) through ``cached_attention`` with RoPE
    tables for positions < ``max_seq_len``, and Griffin's conv through ``causal_conv``; or back."""
    set_core(model, CachedAttentionCore(max_seq_len) if enabled and attention else None)
    for m in model.modules():
        if isinstance(m, RecurrentBlock):
            m.conv = torch.ops.gemma_edge.causal_conv if enabled else conv_with_tail
    return model


def uses_cached_attention(model: nn.Module) -> bool:
    return any(isinstance(m, Attention) and isinstance(m.core, CachedAttentionCore) for m in model.modules())

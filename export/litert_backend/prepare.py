"""The model as LiteRT converts it: PTQ-snapped 4-bit weights, cache writes as in-place slice updates,
our ops as named composites if fused."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from gemma_edge import quant
from gemma_edge.models import ops
from gemma_edge.models.attention import AttentionCore, _as, set_core
from gemma_edge.models.errors import ExportError
from gemma_edge.models.recurrent import RGLRU
from gemma_edge.quant import Recipe


def _composite_attention(q, k, v, q_pos, k_pos, window, scale, softcap, causal):
    from litert_torch.hlfb import StableHLOCompositeBuilder

    b = StableHLOCompositeBuilder(
        name="gemma_edge.sliding_window_attention",
        attr={"window": int(window), "scale": float(scale), "softcap": float(softcap), "causal": bool(causal)},
    )
    q, k, v, q_pos, k_pos = b.mark_inputs(q, k, v, q_pos, k_pos)
    out = ops.attention_reference(q, k, v, q_pos, k_pos, window, scale, softcap, causal)
    return b.mark_outputs(out)


def _composite_rg_lru(x, gxw, gxb, gaw, gab, a_param, pos, h0, c):
    from litert_torch.hlfb import StableHLOCompositeBuilder

    b = StableHLOCompositeBuilder(name="gemma_edge.rg_lru", attr={"c": float(c)})
    x, gxw, gxb, gaw, gab, a_param, pos, h0 = b.mark_inputs(x, gxw, gxb, gaw, gab, a_param, pos, h0)
    y, h = ops.rg_lru_closed_form(x, gxw, gxb, gaw, gab, a_param, pos, h0, c)
    y, h = b.mark_outputs(y, h)
    return y, h


class LiteRTAttentionCore(AttentionCore):
    """Cache writes whose slots are contiguous (every global-cache write, a decode step's ring write)
    as one ``dynamic_update_slice``: TFLite's DYNAMIC_UPDATE_SLICE writes the rows in place when the
    state buffer is bound as both input and output (our Session, LiteRT-LM). ``index_copy`` lowers
    to STABLEHLO_SCATTER, which first copies the whole cache into its output: every cache, every
    step. A prefill chunk's ring write, which may wrap, stays a scatter. A global write starts at
    the chunk's first position: a chunk's positions are consecutive (the ring's own arithmetic
    assumes it too), and the Session refuses positions past the cache.

    A decode step on a ring writes its row first and attends over the ring alone, instead of over
    the ring concatenated with the row (a copy of the whole ring per layer and step). The slot the
    row takes held position pos - slots <= pos - window, which the window does not see, so the
    visible keys are the same (a ring has fewer slots than the window only when max_seq_len is
    smaller, and then it never wraps)."""

    def write(self, cache, slots, rows, contiguous):
        if not contiguous:
            return super().write(cache, slots, rows, contiguous)
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        zero = torch.zeros((), dtype=slots.dtype)
        return dynamic_update_slice(cache, rows, [zero, zero, slots[0], zero])

    def attend(self, layer, q, keys, values, ctx):
        """``ops.masked_attention`` with q·K as litert-torch's ``bmm_4d`` (a BATCH_MATMUL that reads the
        keys as they lie) instead of a matmul against K transposed, which LiteRT converts to a
        FULLY_CONNECTED taking the keys as its weights: XNNPACK repacks those weights on every
        call, a copy of every cache per step."""
        from litert_torch.generative.custom_ops.bmm_4d import bmm_4d

        B, H, T, D = q.shape
        kvH, S = keys.shape[1], keys.shape[2]
        keys, values = _as(keys, q.dtype), _as(values, q.dtype)  # as ops.masked_attention: a cache's type
        rep = H // kvH  # query head h = g * rep + r reads kv head g
        scores = bmm_4d(q.reshape(B, kvH, rep * T, D) * layer.scale, keys)  # (B, kvH, rep * T, S)
        if layer.softcap > 0:
            scores = torch.tanh(scores / layer.softcap) * layer.softcap
        vis = ctx.vis.expand(B, kvH, rep, T, S).reshape(B, kvH, rep * T, S)
        scores = torch.where(vis, scores, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # as ops.masked_attention
        return torch.matmul(probs, values).reshape(B, H, T, D)

    def ring(self, layer, q, k, v, cache, ctx):
        if k.shape[2] != 1:
            return super().ring(layer, q, k, v, cache, ctx)
        slot = ctx.ring_write[0]
        k, v = _as(k, cache[0].dtype), _as(v, cache[1].dtype)  # rows rounded to the cache's type on write
        new = (self.write(cache[0], slot, k, True), self.write(cache[1], slot, v, True))
        if ctx.ring_after is None:  # once per kind and call: the ring's positions after the write
            W = cache[0].shape[2]
            held = torch.where(torch.arange(W, dtype=slot.dtype) == slot, ctx.pos, ctx.ring_pos)  # (B, W)
            ctx.ring_after = replace(ctx, k_pos=held, vis=ops.visible_mask(ctx.pos, held, layer.window, layer.causal))
        return self.attend(layer, q, new[0], new[1], ctx.ring_after), new[0], new[1], new


class CompositeAttentionCore(LiteRTAttentionCore):
    """Attention as the named composite ``gemma_edge.sliding_window_attention``."""

    def attend(self, layer, q, keys, values, ctx):
        return _composite_attention(q, keys, values, ctx.pos, ctx.k_pos, layer.window, layer.scale, layer.softcap,
                                    layer.causal)  # fmt: skip


SMOOTH_ALPHA = 0.5  # SmoothQuant's default migration strength


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    if recipe.embedding_bits is not None:
        raise ExportError(
            f"recipe {recipe.name} on litert: ai-edge-quantizer quantizes the embedding lookup with the "
            "other weights; use the recipe without +emb"
        )
    if recipe.weight_bits == 4 and recipe.group_size not in (32, 128):
        raise ExportError(
            f"recipe {recipe.name} on litert: int4 blocks are 32 or 128, got group size {recipe.group_size}"
        )


def prepare(model: nn.Module, recipe: Recipe, ops_mode: str, copy_model: bool = True, calibration=None) -> nn.Module:
    """A private copy (unless ``copy_model`` is False), its cache writes as slice updates where their
    slots are contiguous (LiteRTAttentionCore), our ops as named composites if fused.
    Quantization happens on the flatbuffer after conversion (``lower``); for 4-bit recipes the
    weights (the table included, which ai-edge-quantizer also quantizes) are first snapped to codes
    chosen by ``recipe.ptq`` on LiteRT's blockwise grid (-8..7, bf16 scales), which ai-edge-quantizer
    then reads back exactly (_int4_recipe). Before that, with calibration text, the pre-norms take
    SmoothQuant scales (quant/smooth.py): LiteRT's int4 kernels quantize each activation row to int8
    on the fly. Measured eager on the real 270M (Hamlet 8 x 512, GPTQ): 1.165x -> 1.138x fp32 PPL."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    quant.apply(model, recipe, "litert", calibration=calibration, smooth_alpha=SMOOTH_ALPHA)
    set_core(model, CompositeAttentionCore() if ops_mode == "fused" else LiteRTAttentionCore())
    if ops_mode == "fused":
        for m in model.modules():
            if isinstance(m, RGLRU):
                m.scan = _composite_rg_lru
    return model

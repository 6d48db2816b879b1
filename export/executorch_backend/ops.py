"""The ``.out`` variants of gemma_edge's custom ops, which ExecuTorch's emitter (``to_executorch``)
substitutes for the functional ops of models/ops.py when a fused program is emitted; the kernels
that run them are runtime_py/kernels/.
"""

from __future__ import annotations

import torch

import gemma_edge.models.ops  # noqa: F401  (defines the functional ops)

_lib = torch.library.Library("gemma_edge", "FRAGMENT")
_lib.define(
    "sliding_window_attention.out(Tensor q, Tensor k, Tensor v, Tensor q_pos, Tensor k_pos, SymInt window, "
    "float scale, float softcap, bool causal, *, Tensor(a!) out) -> Tensor(a!)"
)
_lib.define(
    "ring_attention.out(Tensor q, Tensor k, Tensor v, Tensor k_ring, Tensor v_ring, Tensor q_pos, Tensor ring_pos, "
    "Tensor src, SymInt window, float scale, float softcap, *, Tensor(a!) out, Tensor(b!) k_rows, "
    "Tensor(c!) v_rows) -> (Tensor(a!), Tensor(b!), Tensor(c!))"
)
_lib.define(
    "rope_cache_attention.out(Tensor q, Tensor k, Tensor v, Tensor q_norm, Tensor k_norm, Tensor cos, Tensor sin, "
    "Tensor k_cache, Tensor v_cache, Tensor q_pos, Tensor cache_pos, Tensor src, SymInt window, float scale, "
    "float softcap, float eps, *, Tensor(a!) out, Tensor(b!) k_rows, Tensor(c!) v_rows) "
    "-> (Tensor(a!), Tensor(b!), Tensor(c!))"
)
_lib.define(
    "rg_lru.out(Tensor x, Tensor gate_x_weight, Tensor gate_x_bias, Tensor gate_a_weight, Tensor gate_a_bias, "
    "Tensor a_param, Tensor pos, Tensor h0, float c, *, Tensor(a!) y, Tensor(b!) h) -> (Tensor(a!), Tensor(b!))"
)


def _attention_out(q, k, v, q_pos, k_pos, window, scale, softcap, causal, *, out):
    res = torch.ops.gemma_edge.sliding_window_attention(q, k, v, q_pos, k_pos, window, scale, softcap, causal)
    out.resize_(res.shape).copy_(res)
    return out


def _ring_attention_out(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, window, scale, softcap, *, out, k_rows, v_rows):
    res = torch.ops.gemma_edge.ring_attention(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, window, scale, softcap)
    for t, r in zip((out, k_rows, v_rows), res):
        t.resize_(r.shape).copy_(r)
    return out, k_rows, v_rows


def _rope_cache_attention_out(q, k, v, q_norm, k_norm, cos, sin, k_cache, v_cache, q_pos, cache_pos, src, window,
                              scale, softcap, eps, *, out, k_rows, v_rows):  # fmt: skip
    res = torch.ops.gemma_edge.rope_cache_attention(q, k, v, q_norm, k_norm, cos, sin, k_cache, v_cache, q_pos,
                                                    cache_pos, src, window, scale, softcap, eps)  # fmt: skip
    for t, r in zip((out, k_rows, v_rows), res):
        t.resize_(r.shape).copy_(r)
    return out, k_rows, v_rows


def _rg_lru_out(x, gxw, gxb, gaw, gab, a_param, pos, h0, c, *, y, h):
    ry, rh = torch.ops.gemma_edge.rg_lru(x, gxw, gxb, gaw, gab, a_param, pos, h0, c)
    y.resize_(ry.shape).copy_(ry)
    h.resize_(rh.shape).copy_(rh)
    return y, h


for _key in ("CompositeExplicitAutograd", "Meta"):
    _lib.impl("sliding_window_attention.out", _attention_out, _key)
    _lib.impl("ring_attention.out", _ring_attention_out, _key)
    _lib.impl("rope_cache_attention.out", _rope_cache_attention_out, _key)
    _lib.impl("rg_lru.out", _rg_lru_out, _key)

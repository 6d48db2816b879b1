"""The custom ops that carry Gemma's special parts, with their reference math.

* ``gemma_edge::sliding_window_attention`` - GQA/MQA attention over keys whose absolute positions
  are given (a ring buffer, a full cache, or just the current chunk), with a window, an optional
  logit soft-cap and a causal or bidirectional mask.
* ``gemma_edge::ring_attention`` - the same causal attention over a local layer's ring and the
  current chunk given apart (no concatenation), also handing back the chunk rows the ring write
  takes.
* ``gemma_edge::rope_cache_attention`` - a causal layer's whole attention step after its projections:
  the per-head q/k RMSNorm (Gemma 3) and RoPE of the chunk, attention over (cache before the chunk,
  chunk) as ``ring_attention``, and the rotated chunk rows the cache write takes. One op instead of
  the dozens of small ones that norms and rotate-half otherwise lower to.
* ``gemma_edge::rg_lru`` - the RG-LRU scan of Griffin (REFERENCE §2b) with the hidden state in and
  out.

A KV cache may be kept in fp32, fp16 or **q8** (``int8`` caches): each (B, kvH, slot) row holds D int8
codes in groups of 32, then the groups' fp16 scales as 2 bytes each (little-endian), D + D/16 bytes in
all, as llama.cpp's Q8_0 blocks (d = max|x| / 127, code = roundf(x * (1/d)), ties away from zero, as
ggml-quants.c). ``q8_pack`` / ``q8_unpack`` are its reference; ``rope_cache_attention`` reads and
writes such caches.

The eager kernel of each op *is* the reference function below, so the plain-PyTorch path and the
custom-op path compute the same thing; backends lower the op (or its decomposition) from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import apply_rope, rms_norm

__all__ = [
    "attention_reference",
    "masked_attention",
    "visible_mask",
    "rg_lru_reference",
    "rg_lru_closed_form",
    "sliding_window_attention",
    "ring_attention",
    "rope_cache_attention",
    "rg_lru",
    "Q8_GROUP",
    "q8_pack",
    "q8_unpack",
    "q8_row_bytes",
]

Q8_GROUP = 32


def q8_row_bytes(D: int) -> int:
    """Bytes of one q8 cache row of D values (D a multiple of Q8_GROUP): codes, then fp16 scales."""
    if D % Q8_GROUP:
        raise ValueError(f"a q8 KV cache needs a head dim that is a multiple of {Q8_GROUP}, got {D}")
    return D + 2 * (D // Q8_GROUP)


def q8_pack(x: torch.Tensor) -> torch.Tensor:
    """(..., D) float -> (..., D + D/16) int8 q8 rows: per group of 32, d = max|x| / 127 (fp32), codes
    x * (1/d) rounded half away from zero (C's roundf; 0 where d is 0), then d as fp16 bytes: the
    arithmetic of ggml-quants.c's quantize_row_q8_0, so the codes are llama.cpp's."""
    D = x.shape[-1]
    q8_row_bytes(D)
    g = x.float().reshape(*x.shape[:-1], D // Q8_GROUP, Q8_GROUP)
    d = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    y = g * inv
    a = y.abs()
    codes = torch.sign(y) * (a.floor() + torch.floor(2 * (a - a.floor())))  # roundf, exactly
    codes = codes.clamp(-127, 127).to(torch.int8).reshape(x.shape)
    scales = d.squeeze(-1).to(torch.float16).contiguous().view(torch.int8)  # (..., 2 * D/32) little-endian
    return torch.cat((codes, scales), dim=-1)


def q8_unpack(p: torch.Tensor, D: int) -> torch.Tensor:
    """(..., D + D/16) int8 q8 rows -> (..., D) fp32: each code times its group's fp16 scale."""
    if p.shape[-1] != q8_row_bytes(D):
        raise ValueError(f"q8 rows of {q8_row_bytes(D)} bytes expected for D={D}, got {p.shape[-1]}")
    codes = p[..., :D].float().reshape(*p.shape[:-1], D // Q8_GROUP, Q8_GROUP)
    scales = p[..., D:].contiguous().view(torch.float16).float()  # (..., D/32)
    return (codes * scales[..., None]).reshape(*p.shape[:-1], D)


def visible_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """Mask (B, 1, 1, T, S): which keys each query sees.

    k_pos < 0 marks an empty cache slot or a padded key. Causal: i - window < j <= i
    (window keys including self, REFERENCE §1b). Bidirectional: |i - j| <= window // 2, which is
    HF Gemma 3's rule for EmbeddingGemma (config window 512 -> distance < 257).
    """
    qp = q_pos[None, None, None, :, None]  # (1, 1, 1, T, 1)
    kp = k_pos[:, None, None, None, :]  # (B, 1, 1, 1, S)
    vis = kp >= 0
    if causal:
        vis = vis & (kp <= qp)
        if window > 0:
            vis = vis & (qp - kp < window)
    elif window > 0:
        vis = vis & ((qp - kp).abs() <= window // 2)
    return vis


def attention_reference(
    q: torch.Tensor,  # (B, H, T, D), RoPE applied
    k: torch.Tensor,  # (B, kvH, S, D)
    v: torch.Tensor,  # (B, kvH, S, D)
    q_pos: torch.Tensor,  # (T,) int
    k_pos: torch.Tensor,  # (B, S) int, -1 = not visible
    window: int,  # 0 = global
    scale: float,
    softcap: float,  # 0 = none
    causal: bool,
) -> torch.Tensor:  # (B, H, T, D)
    return masked_attention(q, k, v, visible_mask(q_pos, k_pos, window, causal), scale, softcap)


def masked_attention(
    q: torch.Tensor,  # (B, H, T, D)
    k: torch.Tensor,  # (B, kvH, S, D)
    v: torch.Tensor,  # (B, kvH, S, D)
    vis: torch.Tensor,  # (B, 1, 1, T, S) bool, from visible_mask
    scale: float,
    softcap: float,
) -> torch.Tensor:
    B, H, T, D = q.shape
    kvH = k.shape[1]
    if k.dtype != q.dtype:  # an fp16 KV cache: attention computes in the activations' type
        k, v = k.to(q.dtype), v.to(q.dtype)
    # GQA without repeating K/V: query head h = g * rep + r reads kv head g.
    qg = q.reshape(B, kvH, H // kvH, T, D)  # (B, kvH, rep, T, D)
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale  # (B, kvH, rep, T, S)
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    # A finite floor rather than -inf: a fully masked row (a padded query) stays finite.
    scores = torch.where(vis, scores, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v.unsqueeze(2)).reshape(B, H, T, D)


def _rg_lru_inputs(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, c):
    """Gated input u and log a (both fp32, (B, T, L)) before resets are applied."""
    B, T, L = x.shape
    H = gate_x_weight.shape[0]
    xb = x.reshape(B, T, H, L // H)
    gx = torch.sigmoid((torch.einsum("bthi,hij->bthj", xb, gate_x_weight) + gate_x_bias).reshape(B, T, L))
    ga = torch.sigmoid((torch.einsum("bthi,hij->bthj", xb, gate_a_weight) + gate_a_bias).reshape(B, T, L))
    log_a = -c * ga * F.softplus(a_param)  # log a_t = -c r_t softplus(Lambda)
    return x * gx, log_a


def rg_lru_reference(
    x: torch.Tensor,  # (B, T, L) conv output
    gate_x_weight: torch.Tensor,  # (H, L/H, L/H) block-diagonal input gate
    gate_x_bias: torch.Tensor,  # (H, L/H)
    gate_a_weight: torch.Tensor,  # (H, L/H, L/H) block-diagonal recurrence gate
    gate_a_bias: torch.Tensor,  # (H, L/H)
    a_param: torch.Tensor,  # (L,) Lambda
    pos: torch.Tensor,  # (T,) int positions; 0 resets the state
    h0: torch.Tensor,  # (B, L) fp32 state before the chunk
    c: float,  # 8 in Griffin
) -> tuple[torch.Tensor, torch.Tensor]:  # y (B, T, L), h_T (B, L) fp32
    T = x.shape[1]
    gated, log_a = _rg_lru_inputs(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, c)
    a = torch.exp(log_a)
    reset = (pos == 0)[None, :, None]  # (1, T, 1)
    # At a document start a is zeroed and the sqrt(1 - a^2) multiplier is replaced by 1.
    mult = torch.where(reset, torch.ones_like(a), torch.sqrt(1 - torch.exp(2 * log_a)))
    u = (gated * mult.to(x.dtype)).float()  # (B, T, L)
    a = torch.where(reset, torch.zeros_like(a), a).float()
    h = h0.float()
    ys = []
    for t in range(T):  # the scan accumulates in fp32 (REFERENCE §2b)
        h = a[:, t] * h + u[:, t]
        ys.append(h)
    y = torch.stack(ys, dim=1).to(x.dtype)
    return y, h.clone()


def rg_lru_closed_form(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, pos, h0, c):
    """The same recurrence without a loop over time, for any (symbolic) chunk length T.

    With L_t = sum_{r<=t} log a_r:  h_t = sum_{s<=t} exp(L_t - L_s) u_s + exp(L_t) h0, where terms
    that cross a reset (pos == 0) vanish. Every exponent is <= 0 after masking, so it is stable;
    memory is O(T^2 L), so exporters bound T (the prefill chunk).
    """
    gated, log_a = _rg_lru_inputs(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, c)
    reset = (pos == 0)[None, :, None]
    mult = torch.where(reset, torch.ones_like(log_a), torch.sqrt(1 - torch.exp(2 * log_a)))
    u = (gated * mult.to(x.dtype)).float()  # (B, T, L)
    cum = torch.cumsum(log_a.float(), dim=1)  # (B, T, L)
    seg = torch.cumsum(reset[0, :, 0].to(torch.int64), dim=0)  # (T,) resets seen up to t
    t_idx = torch.arange(pos.shape[0], device=x.device)
    same = (t_idx[:, None] >= t_idx[None, :]) & (seg[:, None] == seg[None, :])  # (T, S)
    diff = cum[:, :, None, :] - cum[:, None, :, :]  # (B, T, S, L)
    decay = torch.exp(torch.where(same[None, :, :, None], diff, torch.full_like(diff, float("-inf"))))
    y = torch.einsum("btsl,bsl->btl", decay, u)
    # where(), not a product with 0: after a reset, h0 is never read (even if it is not finite).
    carry = torch.where((seg == 0)[None, :, None], torch.exp(cum) * h0.float()[:, None, :], torch.zeros_like(cum))
    h = y + carry
    return h.to(x.dtype), h[:, -1].clone()


@torch.library.custom_op("gemma_edge::sliding_window_attention", mutates_args=())
def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int,
    scale: float,
    softcap: float,
    causal: bool,
) -> torch.Tensor:
    return attention_reference(q, k, v, q_pos, k_pos, window, scale, softcap, causal)


@sliding_window_attention.register_fake
def _(q, k, v, q_pos, k_pos, window, scale, softcap, causal):
    return torch.empty_like(q)


@torch.library.custom_op("gemma_edge::ring_attention", mutates_args=())
def ring_attention(
    q: torch.Tensor,  # (B, H, T, D), RoPE applied
    k: torch.Tensor,  # (B, kvH, T, D): the chunk's keys
    v: torch.Tensor,
    k_ring: torch.Tensor,  # (B, kvH, W, D): the ring before the chunk
    v_ring: torch.Tensor,
    q_pos: torch.Tensor,  # (T,) the chunk's positions (queries and keys)
    ring_pos: torch.Tensor,  # (B, W) positions held by the ring slots, -1 = empty
    src: torch.Tensor,  # (T,) which chunk row each ring write takes (attention.ring_write_index)
    window: int,
    scale: float,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal sliding-window attention over (ring, chunk) without concatenating them: the
    sliding_window_attention of the keys cat(k_ring, k) at positions cat(ring_pos, q_pos). Also
    returns the chunk rows to write into the ring (k and v at ``src``): taking them from the op
    orders every ring write after the ring was read, so an exporter can write the ring in place.
    The rings may be fp16 (an fp16 KV cache): the rows come back in the rings' type."""
    k_pos = torch.cat((ring_pos, q_pos[None, :].expand(ring_pos.shape[0], -1)), dim=1)
    keys, values = torch.cat((k_ring.to(k.dtype), k), 2), torch.cat((v_ring.to(v.dtype), v), 2)
    out = attention_reference(q, keys, values, q_pos, k_pos, window, scale, softcap, True)
    return out, k.index_select(2, src).to(k_ring.dtype), v.index_select(2, src).to(v_ring.dtype)


@ring_attention.register_fake
def _(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, window, scale, softcap):
    return torch.empty_like(q), torch.empty_like(k, dtype=k_ring.dtype), torch.empty_like(v, dtype=v_ring.dtype)


@torch.library.custom_op("gemma_edge::rope_cache_attention", mutates_args=())
def rope_cache_attention(
    q: torch.Tensor,  # (B, T, H * D): the chunk's projected queries, before norm and RoPE
    k: torch.Tensor,  # (B, T, kvH * D)
    v: torch.Tensor,  # (B, T, kvH * D)
    q_norm: torch.Tensor,  # (D,) zero-centred RMSNorm weight, or empty: no q/k norm (Gemma 2)
    k_norm: torch.Tensor,  # (D,) or empty
    cos: torch.Tensor,  # (T, rot) fp32, from positions (AttnContext.build)
    sin: torch.Tensor,  # (T, rot)
    k_cache: torch.Tensor,  # (B, kvH, S, D): a ring or a global cache as it was before the chunk
    v_cache: torch.Tensor,
    q_pos: torch.Tensor,  # (T,) the chunk's positions
    cache_pos: torch.Tensor,  # (B, S) positions the cache slots hold, -1 = empty; >= q_pos[0]: stale
    src: torch.Tensor,  # (T,) which chunk row each cache write takes
    window: int,  # 0 = global
    scale: float,
    softcap: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of a chunk over its cache and itself: out (B, T, H * D), and the chunk's
    rotated k rows and its v rows at ``src`` (B, kvH, T, D) in the cache's dtype, for the write
    (a q8 cache, int8: (B, kvH, T, D + D/16) packed rows, see ``q8_pack``).
    A cache slot holding a position at or past the chunk's start is not read (the chunk's own rows
    stand for those positions), so a global cache passes its slot indices as they are."""
    B, T, _ = q.shape
    cache_pos = torch.where(cache_pos < q_pos[0], cache_pos, torch.full_like(cache_pos, -1))
    D = k.shape[-1] // k_cache.shape[1]
    q, k, v = (x.view(B, T, -1, D).transpose(1, 2) for x in (q, k, v))
    if q_norm.numel():
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if k_cache.dtype == torch.int8:  # q8: attend over the dequantized cache, hand back packed rows
        out, k_rows, v_rows = ring_attention(q, k, v, q8_unpack(k_cache, D), q8_unpack(v_cache, D), q_pos, cache_pos,
                                             src, window, scale, softcap)  # fmt: skip
        k_rows, v_rows = q8_pack(k_rows), q8_pack(v_rows)
    else:
        out, k_rows, v_rows = ring_attention(q, k, v, k_cache, v_cache, q_pos, cache_pos, src, window, scale, softcap)
    return out.transpose(1, 2).reshape(B, T, -1), k_rows, v_rows


@rope_cache_attention.register_fake
def _(q, k, v, q_norm, k_norm, cos, sin, k_cache, v_cache, q_pos, cache_pos, src, window, scale, softcap, eps):
    B, T, _ = q.shape
    rows = k_cache.new_empty(B, k_cache.shape[1], T, k_cache.shape[3])
    return torch.empty_like(q), rows, torch.empty_like(rows)


@torch.library.custom_op("gemma_edge::rg_lru", mutates_args=())
def rg_lru(
    x: torch.Tensor,
    gate_x_weight: torch.Tensor,
    gate_x_bias: torch.Tensor,
    gate_a_weight: torch.Tensor,
    gate_a_bias: torch.Tensor,
    a_param: torch.Tensor,
    pos: torch.Tensor,
    h0: torch.Tensor,
    c: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return rg_lru_reference(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, pos, h0, c)


@rg_lru.register_fake
def _(x, gate_x_weight, gate_x_bias, gate_a_weight, gate_a_bias, a_param, pos, h0, c):
    return torch.empty_like(x), torch.empty_like(h0, dtype=torch.float32)

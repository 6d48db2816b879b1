"""The compiled ExecuTorch kernels against the eager reference functions, one op per program."""

import os
import subprocess
import sys

import pytest
import torch
from torch.export import Dim, export

from gemma_edge.export.executorch_backend import ops as _out_ops  # noqa: F401  (the .out schemas the emitter substitutes)
from gemma_edge.models import ops
from gemma_edge.runtime_py.kernels import load_executorch_kernels

G = torch.Generator().manual_seed(0)


def _run_pte(module, args, dynamic_shapes, tmp_path, inputs_list):
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    load_executorch_kernels()
    ep = export(module, args, dynamic_shapes=dynamic_shapes)
    et = to_edge_transform_and_lower(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    assert any("gemma_edge" in str(op.name) for op in et.executorch_program.execution_plan[0].operators)
    path = tmp_path / "op.pte"
    path.write_bytes(et.buffer)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    return [method.execute(list(x)) for x in inputs_list]


class _Attn(torch.nn.Module):
    def __init__(self, window, softcap, causal):
        super().__init__()
        self.window, self.softcap, self.causal = window, softcap, causal

    def forward(self, q, k, v, q_pos, k_pos):
        return torch.ops.gemma_edge.sliding_window_attention(q, k, v, q_pos, k_pos, self.window, 0.25, self.softcap,
                                                             self.causal)  # fmt: skip


@pytest.mark.parametrize("window, softcap, causal", [(0, 0.0, True), (4, 3.0, True), (6, 0.0, False), (0, 0.0, False)])
def test_attention_kernel_matches_reference(tmp_path, window, softcap, causal):
    def inputs(T, S):
        q, k, v = (torch.randn(1, 4, T, 16, generator=G), torch.randn(1, 2, S, 16, generator=G),
                   torch.randn(1, 2, S, 16, generator=G))  # fmt: skip
        k_pos = torch.arange(S)[None].clone()
        k_pos[0, :2] = -1  # empty slots
        if not causal:
            k_pos[0, -3:] = -1  # padding; the last query sees nothing at all when T == S == 1
        return q, k, v, torch.arange(S - T, S), k_pos

    T, S = Dim("T", min=1, max=8), Dim("S", min=2, max=24)
    dyn = ({2: T}, {2: S}, {2: S}, {0: T}, {1: S})
    cases = [inputs(1, 12), inputs(5, 12), inputs(8, 24), inputs(3, 3)]
    outs = _run_pte(_Attn(window, softcap, causal), inputs(4, 12), dyn, tmp_path, cases)
    for args, out in zip(cases, outs):
        ref = ops.attention_reference(*args, window, 0.25, softcap, causal)
        assert (out[0] - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("window, softcap, causal, half, kvH", [(0, 0.0, True, False, 1), (100, 3.0, True, True, 2),
                                                                 (64, 0.0, False, False, 1)])
def test_attention_kernel_splits_a_decode_step_across_key_chunks(tmp_path, window, softcap, causal, half, kvH):
    """One query over hundreds of keys: the kernel splits the keys into chunks (each with its own max,
    merged after), the query heads sharing a key/value head read each row together. Chunks where no
    key is visible (empty slots, outside the window) and a query that sees nothing at all (every slot
    empty: equal weights, as the reference's finite floor gives) come out as the reference does."""

    def inputs(S, empty_from=None, none=False):
        q = torch.randn(1, 4, 1, 16, generator=G) * 3
        k, v = torch.randn(1, kvH, S, 16, generator=G), torch.randn(1, kvH, S, 16, generator=G)
        k_pos = torch.arange(S)[None].clone()
        if empty_from is not None:
            k_pos[0, empty_from:] = -1  # a cache filled only this far
        if none:
            k_pos[:] = -1
        if half:
            k, v = k.half(), v.half()
        return q, k, v, torch.tensor([S - 1 if empty_from is None else empty_from - 1]), k_pos

    S = Dim("S", min=2, max=1024)
    dyn = (None, {2: S}, {2: S}, None, {1: S})
    cases = [inputs(700), inputs(1000, empty_from=130), inputs(300, none=True), inputs(129)]
    outs = _run_pte(_Attn(window, softcap, causal), inputs(200), dyn, tmp_path, cases)
    for (q, k, v, qp, kp), out in zip(cases, outs):
        ref = ops.attention_reference(q, k.float(), v.float(), qp, kp, window, 0.25, softcap, causal)
        torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)


class _Ring(torch.nn.Module):
    def forward(self, q, k, v, k_ring, v_ring, q_pos, ring_pos, src):
        return torch.ops.gemma_edge.ring_attention(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, 8, 0.25, 3.0)


def test_ring_attention_kernel_matches_reference(tmp_path):
    """Attention over (ring, chunk) read in place equals attention over their concatenation; the
    rows it hands back for the ring write are the chunk's rows at src."""
    from gemma_edge.models.attention import ring_slot_positions, ring_write_index

    W = 8

    def inputs(start, T):
        q, k, v = (torch.randn(2, 4, T, 16, generator=G), torch.randn(2, 2, T, 16, generator=G),
                   torch.randn(2, 2, T, 16, generator=G))  # fmt: skip
        kr, vr = torch.randn(2, 2, W, 16, generator=G), torch.randn(2, 2, W, 16, generator=G)
        ring = ring_slot_positions(torch.tensor(start), W)[None].expand(2, W).contiguous()
        pos = torch.arange(start, start + T)
        return q, k, v, kr, vr, pos, ring, ring_write_index(pos, W)[1]

    T = Dim("T", min=1, max=16)
    dyn = ({2: T}, {2: T}, {2: T}, None, None, {0: T}, None, {0: T})
    cases = [inputs(0, 5), inputs(3, 1), inputs(13, 1), inputs(20, 12), inputs(9, 16)]
    outs = _run_pte(_Ring(), inputs(4, 3), dyn, tmp_path, cases)
    for (q, k, v, kr, vr, qp, rp, src), out in zip(cases, outs):
        k_pos = torch.cat((rp, qp[None].expand(2, -1)), 1)
        ref = ops.attention_reference(q, torch.cat((kr, k), 2), torch.cat((vr, v), 2), qp, k_pos, W, 0.25, 3.0, True)
        assert (out[0] - ref).abs().max().item() < 1e-5
        assert torch.equal(out[1], k[:, :, src]) and torch.equal(out[2], v[:, :, src])


@pytest.mark.parametrize("D", [16, 20])  # 20: the conversion's scalar tail after the 8-wide F16C loop
def test_attention_kernels_read_fp16_caches(tmp_path, D):
    """An fp16 KV cache: the kernels convert its rows to fp32 as they read them, and the ring op hands
    back the chunk's rows rounded to fp16 as torch rounds them (to nearest even)."""
    from gemma_edge.models.attention import ring_slot_positions, ring_write_index

    S, W, T = 12, 8, 3
    q, k, v = (torch.randn(1, 4, T, D, generator=G), torch.randn(1, 2, S, D, generator=G).half(),
               torch.randn(1, 2, S, D, generator=G).half())  # fmt: skip
    qp, kp = torch.arange(S - T, S), torch.arange(S)[None].clone()
    (out,) = _run_pte(_Attn(0, 3.0, True), (q, k, v, qp, kp), None, tmp_path, [(q, k, v, qp, kp)])[0]
    ref = ops.attention_reference(q, k.float(), v.float(), qp, kp, 0, 0.25, 3.0, True)
    assert out.dtype == torch.float32 and (out - ref).abs().max().item() < 1e-5

    ck, cv = torch.randn(2, 2, T, D, generator=G), torch.randn(2, 2, T, D, generator=G) * 100
    kr, vr = torch.randn(2, 2, W, D, generator=G).half(), torch.randn(2, 2, W, D, generator=G).half()
    ring = ring_slot_positions(torch.tensor(9), W)[None].expand(2, W).contiguous()
    pos = torch.arange(9, 9 + T)
    src = ring_write_index(pos, W)[1]
    args = (torch.randn(2, 4, T, D, generator=G), ck, cv, kr, vr, pos, ring, src)
    out, k_rows, v_rows = _run_pte(_Ring(), args, None, tmp_path, [args])[0]
    k_pos = torch.cat((ring, pos[None].expand(2, -1)), 1)
    ref = ops.attention_reference(args[0], torch.cat((kr.float(), ck), 2), torch.cat((vr.float(), cv), 2), pos, k_pos,
                                  W, 0.25, 3.0, True)  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # values ~100: fp32 sums differ at ~1e-6 relative
    assert k_rows.dtype == torch.float16 and torch.equal(k_rows, ck[:, :, src].half())
    assert torch.equal(v_rows, cv[:, :, src].half())  # values ~100: rounding, not truncation, decides bits


class _RopeCache(torch.nn.Module):
    def __init__(self, window, softcap, eps):
        super().__init__()
        self.window, self.softcap, self.eps = window, softcap, eps

    def forward(self, q, k, v, qn, kn, cos, sin, kc, vc, q_pos, cache_pos, src):
        return torch.ops.gemma_edge.rope_cache_attention(q, k, v, qn, kn, cos, sin, kc, vc, q_pos, cache_pos, src,
                                                     self.window, 0.25, self.softcap, self.eps)  # fmt: skip


@pytest.mark.parametrize("window, softcap, norm, cache, rot", [(8, 3.0, True, "fp32", 16), (0, 0.0, True, "fp16", 16),
                                                               (8, 0.0, False, "fp16", 8), (0, 3.0, False, "fp32", 12),
                                                               (8, 3.0, True, "q8", 16), (0, 0.0, False, "q8", 24)])
def test_rope_cache_attention_kernel_matches_reference(tmp_path, window, softcap, norm, cache, rot):
    """The whole step of a cached layer in one kernel: per-head q/k RMSNorm (or none, as Gemma 2),
    RoPE of the first ``rot`` channels, attention over (cache before the chunk, chunk) of a ring
    (window) or a global cache, the output in (B, T, H * D) and the rotated rows for the cache write,
    in the cache's type: rounded to fp16, or packed as q8 rows (llama.cpp's Q8_0 blocks, codes then
    scales). Its reference composes rms_norm, apply_rope and ring_attention."""
    from gemma_edge.models.attention import AttnContext, ring_slot_positions, ring_write_index
    from gemma_edge.models.layers import rope_inv_freq

    B, H, kvH, D, S = 2, 4, 2, 64 if cache == "q8" else 16, 8 if window else 40
    inv = rope_inv_freq(D, rot / D, 100.0, 1.0)

    def inputs(start, T):
        q = torch.randn(B, T, H * D, generator=G) * 2
        k, v = torch.randn(B, T, kvH * D, generator=G) * 2, torch.randn(B, T, kvH * D, generator=G)
        v[:, :, :7] = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 127.0])  # q8: d = 1, exact ties round away
        qn, kn = (torch.randn(D, generator=G), torch.randn(D, generator=G)) if norm else (torch.empty(0),) * 2
        kc, vc = torch.randn(B, kvH, S, D, generator=G), torch.randn(B, kvH, S, D, generator=G)
        if cache != "fp32":
            kc, vc = (kc.half(), vc.half()) if cache == "fp16" else (ops.q8_pack(kc), ops.q8_pack(vc))
        pos = torch.arange(start, start + T)
        ctx = AttnContext.build(inv, pos, B, window, True, None)
        if window:
            held, src = ring_slot_positions(torch.tensor(start), S), ring_write_index(pos, S)[1]
        else:  # a global cache: slot = position, the slots from the chunk's start on are stale
            held, src = torch.arange(S), torch.arange(T)
        return q, k, v, qn, kn, ctx.cos, ctx.sin, kc, vc, pos, held[None].expand(B, S).contiguous(), src

    T = Dim("T", min=1, max=16)
    dyn = ({1: T}, {1: T}, {1: T}, None, None, {0: T}, {0: T}, None, None, {0: T}, None, {0: T})
    cases = [inputs(0, 5), inputs(3, 1), inputs(13, 1), inputs(20, 12), inputs(9, 16)]
    outs = _run_pte(_RopeCache(window, softcap, 1e-6), inputs(4, 3), dyn, tmp_path, cases)
    for args, (out, k_rows, v_rows) in zip(cases, outs):
        ref, ref_k, ref_v = ops.rope_cache_attention(*args, window, 0.25, softcap, 1e-6)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert k_rows.dtype == ref_k.dtype == args[7].dtype and k_rows.shape == ref_k.shape
        assert torch.equal(v_rows, ref_v)  # v is not rotated: the same fp32 values, the same rounding or codes
        if cache == "q8":  # the rotated rows differ from torch's by fp32 rounding at most: a code by one step
            step = ref_k[..., D:].contiguous().view(torch.float16).float().repeat_interleave(32, -1)
            assert ((ops.q8_unpack(k_rows, D) - ops.q8_unpack(ref_k, D)).abs() <= step * 1.01).all()
            assert (k_rows[..., :D] != ref_k[..., :D]).float().mean() < 0.01
        else:  # (one ulp before an fp16 rounding)
            torch.testing.assert_close(k_rows.float(), ref_k.float(), rtol=1e-3 if cache == "fp16" else 1e-5,
                                       atol=1e-5)  # fmt: skip


def test_q8_rows_are_llamacpp_q8_0_blocks():
    """A q8 cache row is llama.cpp's Q8_0 (gguf-py's quantizer, bit-exact with ggml-quants.c: the outside
    oracle): the same codes and fp16 scales, laid out as the row's codes then its scales, and the same
    dequantized values. Covers an all-zero group, exact ties (x.5 with d = 1: away from zero, where
    round-half-even would differ) and a head dim that is not a multiple of 32 (refused)."""
    from gguf import GGMLQuantizationType, quants

    x = torch.randn(3, 5, 256, generator=G) * torch.logspace(-3, 2, 5)[None, :, None]
    x[0, 0, 32:64] = 0  # a group of zeros: scale 0, codes 0
    x[1, 0, :32] = torch.arange(-15.5, 16.5)  # d = 16.5 / 127: no ties; then exact ties (d = 1): x.5 rounds away
    x[1, 1, :32] = torch.cat((torch.arange(-2.5, 3.5), torch.tensor([127.0]), torch.zeros(25)))
    ref = quants.quantize(x.numpy(), GGMLQuantizationType.Q8_0).reshape(3, 5, 8, 34)
    p = ops.q8_pack(x)
    assert p.dtype == torch.int8 and p.shape == (3, 5, 256 + 16)
    assert torch.equal(p[..., :256].reshape(3, 5, 8, 32), torch.from_numpy(ref[..., 2:].view("int8").copy()))
    assert torch.equal(p[..., 256:].contiguous().view(torch.int16).reshape(3, 5, 8),
                       torch.from_numpy(ref[..., :2].copy().view("int16")[..., 0]))  # fmt: skip
    deq = quants.dequantize(ref.reshape(3, 5, 272), GGMLQuantizationType.Q8_0)
    assert torch.equal(ops.q8_unpack(p, 256), torch.from_numpy(deq))
    with pytest.raises(ValueError, match="multiple of 32, got 48"):
        ops.q8_pack(torch.zeros(2, 48))


class _LRU(torch.nn.Module):
    def forward(self, x, wx, bx, wa, ba, lam, pos, h0):
        return torch.ops.gemma_edge.rg_lru(x, wx, bx, wa, ba, lam, pos, h0, 8.0)


def test_rg_lru_kernel_matches_reference(tmp_path):
    def inputs(T, pos):
        return (torch.randn(2, T, 16, generator=G), torch.randn(4, 4, 4, generator=G) * 0.3,
                torch.randn(4, 4, generator=G) * 0.3, torch.randn(4, 4, 4, generator=G) * 0.3,
                torch.randn(4, 4, generator=G) * 0.3, torch.randn(16, generator=G), torch.tensor(pos),
                torch.randn(2, 16, generator=G))  # fmt: skip

    T = Dim("T", min=1, max=16)
    dyn = ({1: T}, None, None, None, None, None, {0: T}, None)
    cases = [inputs(6, [4, 5, 6, 0, 1, 2]), inputs(1, [9]), inputs(16, list(range(16)))]
    outs = _run_pte(_LRU(), inputs(3, [1, 2, 3]), dyn, tmp_path, cases)
    for args, (y, h) in zip(cases, outs):
        ry, rh = ops.rg_lru_reference(*args, 8.0)
        assert (y - ry).abs().max().item() < 1e-5 and (h - rh).abs().max().item() < 1e-5


def test_missing_kernel_library_is_a_clear_error(artifact, tmp_path):
    d = artifact("tiny-recurrentgemma", "fp32", "fused")
    code = f"from gemma_edge.runtime_py import load; load({str(d)!r})"
    env = {**os.environ, "GEMMA_EDGE_EXECUTORCH_KERNELS": str(tmp_path / "absent.so")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert f"GEMMA_EDGE_EXECUTORCH_KERNELS points at {tmp_path / 'absent.so'}, which does not exist" in r.stderr


class _Head(torch.nn.Module):
    def __init__(self, weight, scales, bits):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bits = bits

    def forward(self, x):
        return torch.ops.gemma_edge.table_head(x, self.weight, self.scales, self.bits)


class _HeadA8(_Head):
    def forward(self, x):
        return torch.ops.gemma_edge.table_head_a8(x, self.weight, self.scales)


def _a8_reference(x, codes, scales, group):
    """numpy's integer arithmetic for the a8 heads: x rounded to int8 per group on max|x|/127 (half to
    even), exact int32 dots against the codes (N, K) per group, scaled by s_x and the fp16 scales."""
    import numpy as np

    N = codes.shape[0]
    xg = x.numpy().astype(np.float32).reshape(x.shape[0], -1, group)
    sx = (np.abs(xg).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(sx == 0, 0, np.clip(np.rint(xg / sx), -127, 127)).astype(np.int64)
    dots = np.einsum("mgi,ngi->mng", q, codes.reshape(N, -1, group))  # exact integers per group
    return (dots * sx[:, None, :, 0].astype(np.float64) * scales.numpy().astype(np.float64)[None]).sum(-1)


@pytest.mark.parametrize("K, group", [(96, 32), (640, 32), (128, 64), (48, 16)])
def test_table_head_a8_kernel_is_int8_activations_against_the_4bit_table(tmp_path, K, group):
    """gemma_edge::table_head_a8 (SIMD at groups of 32k, portable otherwise) computes, per group, the
    activations rounded to int8 on max|x|/127 (half to even) against the 4-bit codes, in the kernel
    and in the eager op; the reference here is numpy's own integer arithmetic."""
    import numpy as np

    from gemma_edge.export.executorch_backend.table import pack_table

    N = 301  # rows go 4 at a time on the AVX-512 path: an odd count leaves a remainder in some range
    w = torch.randn(N, K, generator=G) * torch.rand(N, 1, generator=G)
    weight, scales = pack_table(w, 4, group)
    wb = weight.numpy()
    codes = np.stack([wb >> 4, wb & 15], -1).reshape(N, K).astype(np.int64) - 8
    x0 = torch.randn(1, K, generator=G) * 30
    x0[0, :group] = 0.0  # an all-zero group
    # a group on scale 1 with exact ties: round half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0)
    ties = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])
    x0[0, group : 2 * group] = ties.repeat(group // len(ties))
    cases = [(x0,), (torch.randn(3, K, generator=G),)]
    outs = _run_pte(_HeadA8(weight, scales, 4), cases[1], ({0: Dim("M", min=1, max=8)},), tmp_path, cases)
    for (x,), out in zip(cases, outs):
        ref = _a8_reference(x, codes, scales, group)
        eager = torch.ops.gemma_edge.table_head_a8(x, weight, scales).double().numpy()
        for got in (out[0].double().numpy(), eager):
            assert got.shape == (x.shape[0], N)
            assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        # it is not the fp32-activation head: the rounding of x shows
        fp = (x.double().numpy() @ (codes.reshape(N, -1, group) * scales.numpy()[..., None]).reshape(N, K).T)
        assert np.abs(out[0].double().numpy() - fp).max() > 1e-3 * np.abs(fp).max()


class _Tile8HeadA8(_Head):
    def forward(self, x):
        return torch.ops.gemma_edge.tile8_head_a8(x, self.weight, self.scales)


class _Tile8Lookup(_Head):
    def forward(self, ids):
        return torch.ops.gemma_edge.tile8_lookup(self.weight, self.scales, ids)


@pytest.mark.parametrize("K, group", [(640, 32), (96, 32), (48, 16)])
def test_tile8_head_and_lookup_read_the_tiled_table(tmp_path, K, group):
    """The 4-bit table in tiles of 8 rows: gemma_edge::tile8_head_a8 (AVX-512 VNNI at groups of 32,
    portable otherwise) is table_head_a8 on the row-major table, here numpy's integer arithmetic on
    the untiled codes; gemma_edge::tile8_lookup returns the rows ExecuTorch's embedding_4bit reads
    from the row-major table. tile_rows / untile_rows are inverses."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (quantized_decomposed ops)
    import numpy as np

    from gemma_edge.export.executorch_backend.table import pack_table, tile_rows, untile_rows

    N = 8 * 45  # 45 tiles: ranges of 32 tiles leave a remainder, and prefetches stop at a range's end
    w = torch.randn(N, K, generator=G) * torch.rand(N, 1, generator=G)
    weight, scales = pack_table(w, 4, group)
    tw, ts = tile_rows(weight, scales)
    assert tw.shape == (N // 8, K // group, 8 * group // 2) and ts.shape == (N // 8, K // group, 8)
    assert all(torch.equal(a, b) for a, b in zip(untile_rows(tw, ts), (weight, scales)))
    assert torch.equal(tw[1, 2, 3 * group // 2 : 4 * group // 2], weight[8 + 3, 2 * group // 2 : 3 * group // 2])
    wb = weight.numpy()
    codes = np.stack([wb >> 4, wb & 15], -1).reshape(N, K).astype(np.int64) - 8
    x0 = torch.randn(1, K, generator=G) * 30
    x0[0, :group] = 0.0  # an all-zero group
    cases = [(x0,), (torch.randn(3, K, generator=G),)]
    outs = _run_pte(_Tile8HeadA8(tw, ts, 4), cases[1], ({0: Dim("M", min=1, max=8)},), tmp_path, cases)
    for (x,), out in zip(cases, outs):
        ref = _a8_reference(x, codes, scales, group)
        eager = torch.ops.gemma_edge.tile8_head_a8(x, tw, ts).double().numpy()
        for got in (out[0].double().numpy(), eager):
            assert got.shape == (x.shape[0], N)
            assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())

    ids = torch.tensor([[0, 7, 8, N - 1], [13, 13, 200, 1]])
    (out,) = _run_pte(_Tile8Lookup(tw, ts, 4), (ids,), None, tmp_path, [(ids,)])[0:1]
    stock = torch.ops.quantized_decomposed.embedding_4bit.dtype(weight, scales, None, -8, 7, ids, dtype=torch.float32)
    assert torch.equal(out[0], stock) and torch.equal(torch.ops.gemma_edge.tile8_lookup(tw, ts, ids), stock)
    bad = torch.tensor([[N]])
    with pytest.raises(RuntimeError):
        _run_pte(_Tile8Lookup(tw, ts, 4), (ids,), None, tmp_path, [(bad,)])


@pytest.mark.parametrize("bits, K, group", [(4, 96, 32), (4, 48, 16), (8, 64, 64), (32, 40, 40)])
def test_table_head_kernel_matches_dequantized_matmul(tmp_path, bits, K, group):
    """gemma_edge::table_head (the SIMD path at groups of 32, the portable one otherwise) computes
    x @ dequantized(table)^T, the table stored as ExecuTorch's quantized embedding kernels read it."""
    from gemma_edge.export.executorch_backend.table import dequantize, pack_table

    N = 300
    w = torch.randn(N, K, generator=G) * torch.rand(N, 1, generator=G)
    w[7] = 0.0  # an all-zero row
    weight, scales = (w, torch.zeros(0, dtype=torch.float16)) if bits == 32 else pack_table(w, bits, group)
    table = dequantize(weight, scales, bits)
    if bits != 32:  # the stored table is the fp32 one within a quantization step
        assert (table - w).abs().max() <= scales.float().max() * (0.5 if bits == 8 else 1.0) + 1e-6
    cases = [(torch.randn(1, K, generator=G) * 30,), (torch.randn(3, K, generator=G),)]
    outs = _run_pte(_Head(weight, scales, bits), cases[1], ({0: Dim("M", min=1, max=8)},), tmp_path, cases)
    for (x,), out in zip(cases, outs):
        ref = x.double() @ table.double().T
        assert out[0].shape == (x.shape[0], N)
        assert (out[0].double() - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())

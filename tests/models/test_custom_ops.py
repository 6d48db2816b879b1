"""The two custom ops: schema checks, outside oracles, equality with the plain path, torch.export."""

import pytest
import torch
import torch.nn.functional as F

from gemma_edge import models
from gemma_edge.models import ops

from conftest import ALL_TINY, CAUSAL_PRESETS

G = torch.Generator().manual_seed(0)


def _attn_inputs(B=2, H=4, kvH=2, T=5, S=12, D=8):
    q = torch.randn(B, H, T, D, generator=G)
    k = torch.randn(B, kvH, S, D, generator=G)
    v = torch.randn(B, kvH, S, D, generator=G)
    q_pos = torch.arange(7, 7 + T)
    k_pos = torch.arange(S).repeat(B, 1)
    k_pos[1, :2] = -1  # empty slots in the second sequence
    return q, k, v, q_pos, k_pos


def _rglru_inputs(B=2, T=6, L=16, H=4):
    bw = L // H
    return (
        torch.randn(B, T, L, generator=G),
        torch.randn(H, bw, bw, generator=G) * 0.3,
        torch.randn(H, bw, generator=G) * 0.3,
        torch.randn(H, bw, bw, generator=G) * 0.3,
        torch.randn(H, bw, generator=G) * 0.3,
        torch.randn(L, generator=G),
        torch.tensor([4, 5, 6, 0, 1, 2]),  # a document boundary mid-chunk
        torch.randn(B, L, generator=G),
        8.0,
    )


def test_opcheck_sliding_window_attention():
    q, k, v, qp, kp = _attn_inputs()
    torch.library.opcheck(torch.ops.gemma_edge.sliding_window_attention.default, (q, k, v, qp, kp, 4, 0.3, 5.0, True))
    torch.library.opcheck(torch.ops.gemma_edge.sliding_window_attention.default, (q, k, v, qp, kp, 6, 0.3, 0.0, False))


def test_opcheck_rg_lru():
    torch.library.opcheck(torch.ops.gemma_edge.rg_lru.default, _rglru_inputs())


@pytest.mark.parametrize("window, causal", [(0, True), (4, True), (0, False), (6, False)])
def test_attention_matches_sdpa_with_independent_mask(window, causal):
    q, k, v, qp, kp = _attn_inputs()
    got = torch.ops.gemma_edge.sliding_window_attention(q, k, v, qp, kp, window, 0.3, 0.0, causal)
    i, j = qp[:, None], kp[:, None, None, :]  # mask built here, not by the op's helper
    allowed = (j >= 0) & ((j <= i) if causal else torch.ones_like(j <= i))
    if window:
        allowed &= (i - j < window) if causal else ((i - j).abs() <= window // 2)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    ref = F.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed, scale=0.3)
    assert (got - ref).abs().max().item() < 1e-5


def test_attention_softcap_matches_explicit_math():
    q, k, v, qp, kp = _attn_inputs(kvH=4)
    got = torch.ops.gemma_edge.sliding_window_attention(q, k, v, qp, kp, 0, 0.3, 2.0, True)
    s = 2.0 * torch.tanh(q @ k.transpose(-1, -2) * 0.3 / 2.0)
    s = s.masked_fill(~((kp[:, None, None, :] <= qp[:, None]) & (kp[:, None, None, :] >= 0)), float("-inf"))
    assert (got - s.softmax(-1) @ v).abs().max().item() < 1e-5


@pytest.mark.parametrize("pos", [[4, 5, 6, 0, 1, 2], [0, 1, 2, 3, 4, 5], [9, 10, 11, 12, 13, 14], [7]])
def test_rg_lru_closed_form_equals_scan(pos):
    args = list(_rglru_inputs(T=len(pos)))
    args[6] = torch.tensor(pos)
    y1, h1 = ops.rg_lru_reference(*args)
    y2, h2 = ops.rg_lru_closed_form(*args)
    assert (y1 - y2).abs().max().item() < 1e-5 and (h1 - h2).abs().max().item() < 1e-5


def test_rg_lru_closed_form_is_stable_over_a_long_chunk():
    """Strong decay over 256 steps: every exponent is masked to <= 0, so nothing overflows."""
    args = list(_rglru_inputs(T=256))
    args[5] = torch.full_like(args[5], 3.0)  # softplus(3) ~ 3: log a down to -24 per step
    args[6] = torch.arange(100, 356)
    y1, _ = ops.rg_lru_reference(*args)
    y2, _ = ops.rg_lru_closed_form(*args)
    assert torch.isfinite(y2).all() and (y1 - y2).abs().max().item() < 1e-5


def test_rg_lru_matches_transformers_module():
    import transformers as T
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRglru

    x, wx, bx, wa, ba, lam, pos, h0, c = _rglru_inputs()
    hf = RecurrentGemmaRglru(T.RecurrentGemmaConfig(hidden_size=16, lru_width=16, num_attention_heads=4))
    with torch.no_grad():
        for p, val in ((hf.input_gate_weight, wx), (hf.input_gate_bias, bx), (hf.recurrent_gate_weight, wa),
                       (hf.recurrent_gate_bias, ba), (hf.recurrent_param, lam)):  # fmt: skip
            p.copy_(val)
    hf.recurrent_states = h0.clone()
    ref = hf(x, pos[None].expand(2, -1))
    y, h = torch.ops.gemma_edge.rg_lru(x, wx, bx, wa, ba, lam, pos, h0, c)
    assert (y - ref).abs().max().item() < 1e-5
    assert (h - hf.recurrent_states).abs().max().item() < 1e-5
    assert h.dtype == torch.float32


@pytest.mark.parametrize("preset", ALL_TINY)
def test_custom_op_path_equals_plain_path(preset):
    model = models.build(preset, seed=3)
    tokens = torch.randint(0, 512, (2, 30), generator=G)
    plain = model(tokens)
    custom = models.use_custom_ops(model)(tokens)
    # Attention: the op kernel is the plain function. RG-LRU: the op kernel is the sequential scan,
    # the plain path its closed form, so they agree to rounding.
    assert (plain - custom).abs().max().item() <= 1e-5
    if model.config.causal:
        a, sa = models.use_custom_ops(model, False)(tokens[:, :11], torch.arange(11), model.init_state(2, 32))
        b, sb = models.use_custom_ops(model)(tokens[:, :11], torch.arange(11), model.init_state(2, 32))
        assert (a - b).abs().max().item() <= 1e-5
        assert max((x - y).abs().max().item() for s, t in zip(sa, sb) for x, y in zip(s, t)) <= 1e-5


def _export_and_compare(model, args):
    ep = torch.export.export(model, args)
    targets = {str(n.target) for n in ep.graph.nodes}
    got, want = ep.module()(*args), model(*args)
    flat_got, flat_want = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(flat_got) == len(flat_want)
    assert max((a - b).abs().max().item() for a, b in zip(flat_got, flat_want)) <= 1e-5
    return targets


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
@pytest.mark.parametrize("T", [12, 1])  # a prefill longer than the window, and one decode step
def test_torch_export_causal_with_custom_ops(preset, T):
    model = models.use_custom_ops(models.build(preset, seed=0))
    args = (torch.randint(0, 512, (1, T), generator=G), torch.arange(9, 9 + T), model.init_state(1, 32))
    targets = _export_and_compare(model, args)
    kinds = set(models.get_preset(preset).layer_kinds)  # every cached attention layer: one rope_cache_attention
    assert ("gemma_edge.rope_cache_attention.default" in targets) == bool(kinds & {"local", "global"})
    assert not targets & {"gemma_edge.ring_attention.default", "gemma_edge.sliding_window_attention.default"}
    assert ("gemma_edge.rg_lru.default" in targets) == (preset == "tiny-recurrentgemma")


def test_torch_export_encoder_with_custom_ops():
    model = models.use_custom_ops(models.build("tiny-embeddinggemma", seed=0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    targets = _export_and_compare(model, (torch.randint(0, 512, (2, 12), generator=G), mask))
    assert "gemma_edge.sliding_window_attention.default" in targets


def test_plain_path_exports_without_custom_ops():
    model = models.build("tiny-recurrentgemma", seed=0)
    args = (torch.randint(0, 512, (1, 3), generator=G), torch.arange(3), model.init_state(1, 16))
    assert not any("gemma_edge" in t for t in _export_and_compare(model, args))


def test_reference_functions_are_the_op_kernels():
    q, k, v, qp, kp = _attn_inputs()
    assert torch.equal(ops.attention_reference(q, k, v, qp, kp, 4, 0.3, 0.0, True),
                       torch.ops.gemma_edge.sliding_window_attention(q, k, v, qp, kp, 4, 0.3, 0.0, True))  # fmt: skip


@pytest.mark.parametrize("preset", ALL_TINY)
def test_fused_projections_change_nothing(preset):
    """q/k/v and gate/up fused into one linear each (a backend's adaptation) give the same outputs."""
    model = models.build(preset, seed=0)
    ids = torch.randint(3, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    ref = model(ids)
    n_attn = sum(k != "recurrent" for k in model.config.layer_kinds)
    assert models.fuse_projections(model) == 2 * n_attn + model.config.num_layers
    assert (model(ids) - ref).abs().max().item() <= 1e-5

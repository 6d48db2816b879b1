"""4-bit PTQ: codes on each backend's grid, scale search never worse than round-to-nearest, GPTQ
lower output error than both on correlated inputs."""

import pytest
import torch

from gemma_edge import models
from gemma_edge.quant import parse_recipe, ptq
from gemma_edge.quant.nbits import dequantize_blockwise, quantize_blockwise


@pytest.fixture
def weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=g) * 0.05
    w[3, 5] = 0.9  # an outlier: the max rule wastes most codes of its group
    return w


@pytest.mark.parametrize("backend", list(ptq.GRIDS))
@pytest.mark.parametrize("method", ["rtn", "mse"])
def test_snapped_weights_lie_on_the_grid(weight, backend, method):
    grid = ptq.GRIDS[backend]
    q, s = ptq.quantize_weight(weight, 32, grid, method)
    assert s.shape == (48, 4)
    assert torch.equal(s, s.to(grid.scale_dtype).float())  # stored exactly at the kernel's precision
    codes = q.reshape(48, 4, 32) / s[..., None]
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= grid.qmin and codes.round().max() <= grid.qmax


@pytest.mark.parametrize("backend", list(ptq.GRIDS))
def test_scale_search_beats_round_to_nearest(weight, backend):
    grid = ptq.GRIDS[backend]
    err = {m: (ptq.quantize_weight(weight, 32, grid, m)[0] - weight).pow(2).sum().item() for m in ("rtn", "mse")}
    assert err["mse"] < 0.9 * err["rtn"]


def test_gptq_lowers_output_error():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(4096, 64, generator=g) @ mix  # correlated inputs: where GPTQ's compensation pays
    w = torch.randn(32, 64, generator=g) * 0.1
    H = x.T @ x / x.shape[0]
    out = {}
    for m in ("rtn", "mse", "gptq"):
        q, _ = ptq.quantize_weight(w, 32, ptq.GRIDS["onnx"], m, H)
        out[m] = (x @ (q - w).T).pow(2).mean().item()
    assert out["gptq"] < 0.7 * out["mse"] and out["mse"] <= out["rtn"]


def test_onnx_layout_keeps_given_scales(weight):
    q, s = ptq.quantize_weight(weight, 32, ptq.GRIDS["onnx"], "mse")
    qw, scales = quantize_blockwise(q, 4, 32, s)
    assert torch.equal(scales, s)
    assert torch.allclose(dequantize_blockwise(qw, scales, 4), q, atol=1e-7)  # the MatMulNBits bytes hold q


def test_recipe_ptq_field():
    assert parse_recipe("8da4w+emb4").ptq == "gptq"
    assert parse_recipe("8da8w").ptq == "rtn"  # no 4-bit part: nothing to choose
    assert parse_recipe("int4", ptq="mse").ptq == "mse"
    with pytest.raises(Exception, match="unknown PTQ method"):
        parse_recipe("int4", ptq="awq")
    with pytest.raises(Exception, match="group size > 0"):
        parse_recipe("int4", group_size=0)


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_litert_codes_are_read_back_exactly_by_ai_edge_quantizer(weight, method):
    """LiteRT's weights reach the flatbuffer through ai-edge-quantizer's dequantized_weight_recovery,
    which takes a block's scale as its smallest step: every block must have a unit step, also ones
    whose weights would snap only to magnitudes like {3, 5, 7} (scale read back 2x, codes lost)."""
    from ai_edge_quantizer.algorithms.uniform_quantize import dequantized_weight_recovery as dwr

    w = weight.clone()
    w[0, :32] = torch.tensor([0.3, -0.5, 0.7, 0.0] * 8)  # magnitudes 3, 5, 7 (and 0) at scale 0.1
    w[1, 32:64] = torch.tensor([0.2, -0.4, 0.6, 0.8] * 8)  # even codes only
    H = torch.eye(128) + 0.1
    q, s = ptq.quantize_weight(w, 32, ptq.GRIDS["litert"], method, H)
    _, scales = dwr.get_zp_scale_from_dequantized_symmetric_weights(q.numpy(), quantized_dimension=1, block_size=32)
    assert torch.equal(torch.from_numpy(scales).reshape(s.shape).float(), s)
    codes = q.reshape(48, 4, 32) / s[..., None]
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7


def test_smoothing_keeps_the_fp32_function_and_flattens_the_activations():
    """quant/smooth.py folds its scales into the pre-norms: the fp32 logits do not move, and the
    q/k/v input's largest channel comes closer to the rest."""
    import copy

    from gemma_edge.quant.smooth import smooth_pre_norms

    model = models.build("tiny-gemma3", seed=0).eval()
    with torch.no_grad():  # an outlier channel, as trained Gemmas have
        for blk in model.backbone.layers:
            blk.pre_norm.weight[3] = 40.0
    ids = torch.randint(3, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(1))
    smoothed = copy.deepcopy(model)
    assert smooth_pre_norms(smoothed, ids[0].tolist()) == 2 * len(model.backbone.layers)
    with torch.no_grad():
        assert (smoothed(ids) - model(ids)).abs().max() < 1e-4

    def spread(m):
        seen = []
        h = m.backbone.layers[0].temporal.q_proj.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
        with torch.no_grad():
            m(ids)
        h.remove()
        a = seen[0].abs().reshape(-1, seen[0].shape[-1]).amax(0)
        return (a.max() / a.median()).item()

    assert spread(smoothed) < 0.5 * spread(model)

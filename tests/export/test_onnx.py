"""ONNX export of every family: parity in ONNX Runtime, genai naming, window-sized caches, contrib-op
quantization in ONNX Runtime's own layout."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from gemma_edge import models
from gemma_edge.export import export
from gemma_edge.export.onnx_backend import GENAI_RING_SLACK
from gemma_edge.models import ExportError
from gemma_edge.quant.nbits import quantize_blockwise
from gemma_edge.runtime_py import load

from conftest import ALL_TINY, CAUSAL_PRESETS, checked_manifest

FAST = [(p, "fp32", "portable") for p in ALL_TINY] + [
    ("tiny-gemma3", "int4", "portable"),
    ("tiny-recurrentgemma", "int4", "portable"),
    ("tiny-recurrentgemma", "int4", "fused"),
    ("tiny-gemma2", "8da4w+emb4", "portable"),
    ("tiny-gemma2", "fp32", "fused"),
    ("tiny-gemma3", "fp32", "fused"),
    ("tiny-gemma3", "int4", "fused"),
    ("tiny-gemma3", "8da8w", "portable"),
]
FULL = [
    (p, r, o)
    for p in ALL_TINY
    for r in ("fp32", "int4", "int8", "8da4w")
    for o in ("portable", "fused")
    if (p, r, o) not in FAST
] + [("tiny-gemma3", "int4+emb4", "fused"), ("tiny-recurrentgemma", "8da4w+emb4", "fused")]


def _onnx_artifact(artifact, preset, recipe, ops="portable"):
    return artifact(preset, recipe, ops, backend="onnx")


def _graph(d):
    return onnx.load(str(d / "model.onnx"), load_external_data=False)


@pytest.mark.parametrize("preset, recipe, ops", FAST)
def test_onnx_export_verifies(artifact, preset, recipe, ops):
    d = _onnx_artifact(artifact, preset, recipe, ops)
    m = checked_manifest(d, "onnx", recipe)
    assert m["model_file"] == "model.onnx"
    nodes = [(n.domain, n.op_type) for n in _graph(d).graph.node]
    layout = m["methods"][next(iter(m["methods"]))].get("quantization", {})
    n_linear = layout.get("linear", {}).get("count", 0) + ("+emb" in recipe)  # + the quantized head
    assert nodes.count(("com.microsoft", "MatMulNBits")) == n_linear
    assert nodes.count(("com.microsoft", "GatherBlockQuantized")) == ("+emb4" in recipe)
    n_attn = sum(k != "recurrent" for k in m["config"]["layer_kinds"]) if m["config"]["causal"] else 0
    gqa = m["ops"] == "fused" and m["config"]["head_dim"] % 16 == 0  # GQA's rotary needs multiples of 16
    assert nodes.count(("com.microsoft", "GroupQueryAttention")) == (n_attn if gqa else 0)
    n_rec = sum(k == "recurrent" for k in m["config"]["layer_kinds"])
    assert nodes.count(("com.microsoft", "CausalConvWithState")) == (n_rec if m["ops"] == "fused" else 0)


@pytest.mark.slow
@pytest.mark.parametrize("preset, recipe, ops", FULL)
def test_onnx_export_verifies_full_matrix(artifact, preset, recipe, ops):
    checked_manifest(_onnx_artifact(artifact, preset, recipe, ops), "onnx", recipe)


def test_genai_names_and_window_sized_caches(artifact):
    d = _onnx_artifact(artifact, "tiny-gemma2", "fp32")
    g = _graph(d).graph
    cfg = models.get_preset("tiny-gemma2")
    inputs = {i.name: [x.dim_value or x.dim_param for x in i.type.tensor_type.shape.dim] for i in g.input}
    outputs = [o.name for o in g.output]
    assert list(inputs)[:2] == ["input_ids", "attention_mask"] and outputs[0] == "logits"
    for i, kind in enumerate(cfg.layer_kinds):
        slots = cfg.window + GENAI_RING_SLACK if kind == "local" else 96
        for t in ("key", "value"):
            assert inputs[f"past_key_values.{i}.{t}"] == [1, cfg.num_kv_heads, slots, cfg.head_dim]
            assert f"present.{i}.{t}" in outputs
    assert cfg.layer_kinds[0] == "local" and cfg.window < 96  # Gemma 2: even layers slide


def test_sliding_layers_are_the_right_ones(hf_causal, tmp_path):
    """The ONNX artifact of a transformers-written Gemma 2 matches transformers across several
    windows; the same weights with the local/global pattern swapped do not."""
    d, hf = hf_causal("tiny-gemma2")
    ours = models.load(d)
    seq = 40
    assert ours.config.window * 4 < seq
    ids = torch.randint(3, ours.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(3))
    ref = hf(ids, use_cache=False).logits[0]
    art = export(ours, "onnx", "fp32", 64, "portable", tmp_path / "a", progress=lambda m: None)
    s = load(art)
    got = torch.stack([s.decode(int(t)) for t in ids[0]])
    assert (got - ref).abs().max().item() <= 1e-3
    kinds = tuple("global" if k == "local" else "local" for k in ours.config.layer_kinds)
    swapped = models.build(dataclasses.replace(ours.config, layer_kinds=kinds))
    swapped.load_state_dict(ours.state_dict())
    assert (swapped(ids)[0] - ref).abs().max().item() > 1e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_blockwise_layout_is_onnxruntimes_own(bits):
    """Our packing and scales equal ONNX Runtime's own MatMulNBits quantizer, bit for bit."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    N, K, block = 48, 128, 32
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0))
    packed = np.zeros((N, K // block, block * bits // 8), dtype=np.uint8)
    scales = np.zeros((N, K // block), dtype=np.float32)
    zp = np.zeros((N, (K // block + 1) // 2), dtype=np.uint8)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(
        packed, w.T.contiguous().numpy(), scales, zp, block, N, K, True
    )
    q, s = quantize_blockwise(w, bits, block)
    assert np.array_equal(q.numpy(), packed) and np.array_equal(s.numpy(), scales)


def test_tied_quantized_table_is_stored_once(artifact):
    d = _onnx_artifact(artifact, "tiny-gemma2", "8da4w+emb4")
    g = _graph(d).graph
    cfg = models.get_preset("tiny-gemma2")
    table_bytes = cfg.vocab_size * cfg.d_model // 2
    size = lambda i: int(np.prod(i.dims)) * (1 if i.data_type == onnx.TensorProto.UINT8 else 4)  # noqa: E731
    big = [i for i in g.initializer if size(i) >= table_bytes]
    assert len(big) == 1  # the head's MatMulNBits and the GatherBlockQuantized read one tensor


def test_quantized_scales_are_stored_fp16(artifact):
    """MatMulNBits takes scales in the activations' type; the file holds them as fp16 behind a Cast
    (0.5 instead of 1 bit per weight at block 32), which the lowering parity above runs through."""
    g = _graph(_onnx_artifact(artifact, "tiny-gemma2", "8da4w+emb4")).graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    quantized = [n for n in g.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert quantized
    for n in quantized:
        name = n.input[2]
        while name not in inits:  # Cast, and a Reshape where the head and the lookup share the scales
            assert producers[name].op_type in ("Cast", "Reshape"), n.name
            name = producers[name].input[0]
        assert inits[name].data_type == onnx.TensorProto.FLOAT16, n.name


def _lookup(g):
    gbq = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in g.node if n.op_type == "MatMulNBits" and n.input[1] == gbq.input[0])
    return gbq, head


def test_lookup_reads_the_heads_table_in_place(artifact, tmp_path):
    """The lookup gathers from the very initializer the head's MatMulNBits reads, in its 3-D layout: a
    Reshape of it (folded by ONNX Runtime at load) would hold a second copy of the table in memory.
    Its fp16 scales are read as stored where every code times its scale is exact in fp16 (else
    through the head's fp32 Cast); either way the export verifies against the eager model."""
    g = _graph(_onnx_artifact(artifact, "tiny-gemma2", "8da4w+emb4")).graph
    inits = {i.name: i for i in g.initializer}
    gbq, _ = _lookup(g)  # (it finds the head reading the lookup's data: the one table)
    assert gbq.input[0] in inits and len(inits[gbq.input[0]].dims) == 3
    assert gbq.input[2] not in inits  # random tiny scales: fp16 products not exact, the fp32 path

    # Table values on a coarse grid and round-to-nearest codes: every block scale has few mantissa
    # bits, so the products are exact.
    model = models.build("tiny-gemma2", seed=0)
    with torch.no_grad():
        w = model.backbone.embed.weight
        w.copy_(torch.round(w * 16) / 16)
    d = export(model, "onnx", "int4+emb4", 32, "fused", tmp_path / "a", ptq="rtn", progress=lambda m: None)
    checked_manifest(d, "onnx", "int4+emb4")
    g = _graph(d).graph
    inits = {i.name: i for i in g.initializer}
    gbq, _ = _lookup(g)
    s = inits[gbq.input[2]]
    assert s.data_type == onnx.TensorProto.FLOAT16 and list(s.dims) == [*inits[gbq.input[0]].dims[:2], 1]


def test_onnx_refusals(tmp_path):
    model = models.build("tiny-gemma3", seed=0)
    with pytest.raises(ExportError, match=r"GatherBlockQuantized .* takes 4-bit tables only; use \+emb4"):
        export(model, "onnx", "int4+emb8", 32, "portable", tmp_path / "a", progress=lambda m: None)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_onnx_session_generates_like_executorch(artifact, preset):
    """Two runtimes, one model: the same greedy tokens (fp32)."""
    a = load(_onnx_artifact(artifact, preset, "fp32")).generate([2, 17, 33], max_new_tokens=24, stop_tokens=[])
    b = load(artifact(preset)).generate([2, 17, 33], max_new_tokens=24, stop_tokens=[])
    assert a == b and len(a) == 24


@pytest.mark.parametrize("preset", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("ops", ["portable", "fused"])
def test_onnxruntime_genai_generates_like_our_session(artifact, preset, ops):
    """onnxruntime-genai loads the artifact through its genai_config.json and, over 40 steps (five
    windows), produces our Session's greedy tokens and logits."""
    import onnxruntime_genai as og

    d = _onnx_artifact(artifact, preset, "fp32", ops)
    m = json.loads((d / "manifest.json").read_text())
    prompt, steps = [2, 17, 33, 101, 7], 40
    model = og.Model(str(d))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=m["max_seq_len"], do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    s = load(d)
    logits = s.prefill(prompt)
    ours, theirs = [], []
    for _ in range(steps):
        assert np.abs(gen.get_logits().reshape(-1) - logits.numpy()).max() <= 1e-4
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
        ours.append(int(logits.argmax()))
        logits = s.decode(ours[-1])
    assert theirs == ours and len(set(ours)) > 1


def test_fused_partial_rotary_griffin(tmp_path):
    """GroupQueryAttention with RoPE on half the head (Griffin) and a window of 8, against eager."""
    cfg = dataclasses.replace(models.get_preset("tiny-recurrentgemma"), num_heads=3, head_dim=32, query_scale=32.0)
    out = export(models.build(cfg, seed=0), "onnx", "fp32", 64, "fused", tmp_path / "a", progress=lambda m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["methods"]["forward"]["attention"] == "GroupQueryAttention" and m["parity"]["missed"] == []
    assert m["parity"]["results"]["reference"]["max_abs"] <= 1e-3


def test_ort_format_model_runs_like_the_onnx(tmp_path):
    """--ort-format writes model.ort (ONNX Runtime Mobile's format); it computes the same logits."""
    import onnxruntime as ort

    model = models.build("tiny-gemma3", seed=0)
    d = export(
        model, "onnx", "int4", 32, "fused", tmp_path / "a", options={"ort_format": True}, progress=lambda m: None
    )
    m = json.loads((d / "manifest.json").read_text())
    assert "model.ort" in m["files"] and (d / "model.ort").read_bytes()[4:8] == b"ORTM"
    feeds = {"input_ids": np.array([[2, 17, 33, 5]]), "attention_mask": np.ones((1, 4), dtype=np.int64)}
    for i in m["methods"]["forward"]["inputs"][2:]:
        feeds[i["name"]] = np.zeros(i["shape"], dtype=np.float32)
    a, b = (ort.InferenceSession(str(d / f)).run(["logits"], feeds)[0] for f in ("model.onnx", "model.ort"))
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.01
    with pytest.raises(models.InputError, match="ort_format are not executorch options; executorch takes: kv_cache"):
        export(
            model,
            "executorch",
            "fp32",
            32,
            "portable",
            tmp_path / "b",
            options={"ort_format": True},
            progress=lambda m: None,
        )
    with pytest.raises(models.InputError, match="options must be a dict of onnx options, got str"):
        export(model, "onnx", "fp32", 32, "portable", tmp_path / "c", options="ort_format", progress=lambda m: None)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()

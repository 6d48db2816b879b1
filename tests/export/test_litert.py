"""LiteRT export of every family: parity in LiteRT's interpreter, litert-torch's signature
conventions, window-sized rings, named composites in the flatbuffer, ai-edge-quantizer recipes."""

import json
from collections import Counter

import pytest
import torch

from gemma_edge import models
from gemma_edge.export import export
from gemma_edge.export.litert_backend import composite_names, signature_ops
from gemma_edge.models import ExportError
from gemma_edge.runtime_py import load

from conftest import ALL_TINY, CAUSAL_PRESETS, checked_manifest

# Default run: every family once and each recipe path LiteRT alone has; `make test-slow` the rest.
FAST = [(p, "fp32", "portable") for p in ALL_TINY if p != "tiny-recurrentgemma"] + [
    ("tiny-gemma3", "int4", "portable"),
    ("tiny-recurrentgemma", "fp32", "fused"),
    ("tiny-gemma2", "int4", "fused"),
    ("tiny-gemma3", "fp16", "portable"),
]
FULL = [
    (p, r, o)
    for p in ALL_TINY
    for r in ("fp32", "fp16", "int4", "int8", "8da4w", "8da8w")
    for o in ("portable", "fused")
    if (p, r, o) not in FAST
]


def _art(artifact, preset, recipe="fp32", ops="portable"):
    return artifact(preset, recipe, ops, backend="litert")


@pytest.mark.parametrize("preset, recipe, ops", FAST)
def test_litert_export_verifies(artifact, preset, recipe, ops):
    d = _art(artifact, preset, recipe, ops)
    m = checked_manifest(d, "litert", recipe)
    names = Counter(composite_names(d / "model.tflite"))
    cfg = models.get_preset(preset)
    n_sigs = len(m["methods"])
    if ops == "fused":  # one composite per op call in each signature
        assert names["gemma_edge.sliding_window_attention"] == n_sigs * sum(k != "recurrent" for k in cfg.layer_kinds)
        assert names["gemma_edge.rg_lru"] == n_sigs * sum(k == "recurrent" for k in cfg.layer_kinds)
    else:
        assert not names
    if recipe in ("fp16", "int8", "8da8w"):  # every linear's weight is stored in the recipe's type
        assert _weight_dtypes(d / "model.tflite") == {"fp16": {"float16"}, "int8": {"int8"}, "8da8w": {"int8"}}[recipe]


def _weight_dtypes(tflite) -> set[str]:
    """Types of the 2-D constant operands of the FULLY_CONNECTED ops (after any DEQUANTIZE)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite))
    details = {t["index"]: t for t in interp.get_tensor_details()}
    producers = {}
    for op in interp._get_ops_details():
        for o in op["outputs"]:
            producers[o] = op
    found = set()
    for op in interp._get_ops_details():
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        w = op["inputs"][1]
        src = producers.get(w)
        if src is not None and src["op_name"] == "DEQUANTIZE":
            w = src["inputs"][0]
        if w in details and len(details[w]["shape"]) == 2 and w not in producers:
            found.add(details[w]["dtype"].__name__)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("preset, recipe, ops", FULL)
def test_litert_export_verifies_full_matrix(artifact, preset, recipe, ops):
    checked_manifest(_art(artifact, preset, recipe, ops), "litert", recipe)


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_signatures_follow_litert_torch_conventions(artifact, preset):
    from ai_edge_litert.interpreter import Interpreter

    d = _art(artifact, preset)
    cfg = models.get_preset(preset)
    sigs = Interpreter(model_path=str(d / "model.tflite")).get_signature_list()
    m = json.loads((d / "manifest.json").read_text())
    assert set(sigs) == {f"prefill_{m['prefill_chunk']}", "decode"}
    assert m["prefill_chunk"] == 32  # LiteRT's default chunk: a smaller XNNPACK arena than 128's
    shapes = {i["name"]: i["shape"] for i in m["methods"]["decode"]["inputs"]}
    assert shapes["tokens"] == [1, 1] and shapes["input_pos"] == [1]
    for i, kind in enumerate(cfg.layer_kinds):
        if kind == "recurrent":
            assert {f"conv_state_{i}", f"rglru_state_{i}"} <= set(sigs["decode"]["inputs"])
        else:
            slots = cfg.window if kind == "local" else 96  # a ring of window slots, not max_seq_len
            assert shapes[f"kv_cache_k_{i}"] == [1, cfg.num_kv_heads, slots, cfg.head_dim]
            assert {f"kv_cache_k_{i}", f"kv_cache_v_{i}"} <= set(sigs["decode"]["outputs"])
    assert "logits" in sigs["decode"]["outputs"]


@pytest.mark.parametrize("preset, ops", [("tiny-gemma3", "portable"), ("tiny-recurrentgemma", "fused")])
def test_cache_writes_are_slice_updates(artifact, preset, ops):
    """A decode step writes each cache row with DYNAMIC_UPDATE_SLICE (in place: the Session binds one
    buffer as the state's input and output), never STABLEHLO_SCATTER (which copies the whole cache
    into its output first). A prefill chunk writes its global caches so too; its ring writes, which
    may wrap, stay scatters. Verify and the generation tests hold the values."""
    cfg = models.get_preset(preset)
    n_local = sum(k == "local" for k in cfg.layer_kinds)
    n_global = sum(k == "global" for k in cfg.layer_kinds)
    d = _art(artifact, preset, "fp32", ops)
    sigs = signature_ops(d / "model.tflite")
    prefill = next(k for k in sigs if k.startswith("prefill_"))
    assert sigs["decode"]["DYNAMIC_UPDATE_SLICE"] == 2 * (n_local + n_global)
    assert sigs["decode"]["STABLEHLO_SCATTER"] == 0
    assert sigs[prefill]["DYNAMIC_UPDATE_SLICE"] == 2 * n_global
    assert sigs[prefill]["STABLEHLO_SCATTER"] == 2 * n_local


def test_litert_session_generates_like_executorch(artifact):
    a = load(_art(artifact, "tiny-gemma3")).generate([2, 17, 33], max_new_tokens=24, stop_tokens=[])
    b = load(artifact("tiny-gemma3")).generate([2, 17, 33], max_new_tokens=24, stop_tokens=[])
    assert a == b and len(a) == 24


def test_session_packs_weights_once_into_a_shared_cache(artifact, tmp_path, monkeypatch):
    """XNNPACK packs the weights into one cache file under $GEMMA_EDGE_CACHE/litert that every
    signature shares and the next load maps; the state buffers serve every signature in place (the
    prefill chunk and decode agree with a decode-only run across the window). An unwritable cache
    folder costs memory, not correctness."""
    d = _art(artifact, "tiny-gemma3")
    ids = list(range(40, 40 + 40))  # a prefill chunk (32), then decode steps, past the window
    monkeypatch.setenv("GEMMA_EDGE_CACHE", str(tmp_path / "cache"))
    first = load(d)
    (cache,) = (tmp_path / "cache" / "litert").glob("*.xnnpack_cache")
    assert cache.stat().st_size > 0
    a = first.prefill(ids)
    second = load(d)
    assert any(line.rstrip().endswith(str(cache)) for line in open("/proc/self/maps"))  # mapped, not repacked
    b = torch.stack([second.decode(t) for t in ids])[-1]  # T=1 only
    # XNNPACK's 32-row and 1-row fp32 GEMMs sum in different orders: agreement to rounding (5e-7 seen)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GEMMA_EDGE_CACHE", str(tmp_path / "file"))  # a folder cannot be made there
    assert torch.equal(load(d).prefill(ids), a)


def test_litert_refusals(tmp_path):
    model = models.build("tiny-gemma3", seed=0)
    with pytest.raises(ExportError, match=r"quantizes the embedding lookup with the other weights"):
        export(model, "litert", "int4+emb4", 32, "portable", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(ExportError, match="int4 blocks are 32 or 128, got group size 64"):
        export(model, "litert", "int4", 32, "portable", tmp_path / "a", group_size=64, progress=lambda m: None)
    assert not (tmp_path / "a").exists()


def test_int4_stores_the_ptq_codes_on_the_full_grid(artifact):
    """The flatbuffer holds exactly the weights PTQ snapped (read back by the interpreter, not by
    us), code -8 included: ai-edge-quantizer's own rule (block max / 7) would leave it unused."""
    import numpy as np
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from gemma_edge.export import api, litert_backend
    from gemma_edge.quant import parse_recipe

    d = _art(artifact, "tiny-gemma3", "int4")
    model = models.build("tiny-gemma3", seed=0)
    rec = parse_recipe("int4")
    prepared = litert_backend.prepare(model, rec, "portable", calibration=api.calibration(model.config, rec, None))
    found = litert_backend._artifact_weights(d / "model.tflite")
    targets = [m for m in prepared.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    for m in targets:
        assert any(torch.equal(c, m.weight) for c in found[tuple(m.weight.shape)]), m
    interp = Interpreter(model_path=str(d / "model.tflite"))
    codes = []
    for t in interp.get_tensor_details():
        if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) > 1:
            try:
                codes.append(interp.get_tensor(t["index"]))
            except ValueError:
                continue
    assert codes and min(int(c.min()) for c in codes) == -8 and max(int(c.max()) for c in codes) == 7


def test_session_takes_the_prefill_chunk_from_the_manifest(artifact, tmp_path):
    """The manifest names the prefill chunk; a manifest that disagrees with the file's signatures
    is refused at load, naming the signature it looked for."""
    import shutil

    from gemma_edge.models import ArtifactError

    src = _art(artifact, "tiny-gemma3")
    assert load(src).prefill_name == f"prefill_{json.loads((src / 'manifest.json').read_text())['prefill_chunk']}"
    d = tmp_path / "a"
    shutil.copytree(src, d)
    m = json.loads((d / "manifest.json").read_text())
    m["prefill_chunk"] = 7
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="has no signature prefill_7"):
        load(d)

"""Clear errors for what a user can get wrong, each leaving nothing half-written."""

import json

import pytest

from gemma_edge import models
from gemma_edge.export import export
from gemma_edge.models import ArtifactError, ExportError, InputError
from gemma_edge.runtime_py import load

BACKENDS = ["executorch", "onnx", "litert"]
FILES = {
    "executorch": ["model.pte"],
    "onnx": ["model.onnx", "model.onnx.data", "genai_config.json"],
    "litert": ["model.tflite"],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_tampered_artifact_is_refused(artifact, tmp_path, backend):
    import shutil

    src = artifact("tiny-gemma3", backend=backend)
    for name in FILES[backend]:
        d = tmp_path / name
        shutil.copytree(src, d)
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / name).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=rf"{name} does not match its sha256"):
            load(d)
        (d / name).unlink()
        with pytest.raises(ArtifactError, match=rf"artifact file .*{name} is missing"):
            load(d)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        load(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "nope")


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_id_out_of_range(artifact, backend):
    s = load(artifact("tiny-gemma3", backend=backend))
    with pytest.raises(InputError, match="token id 512 is out of range: the model's vocab_size is 512"):
        s.prefill([2, 512])
    with pytest.raises(InputError, match="token id -1 is out of range"):
        s.prefill([-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_longer_than_max_seq_len(artifact, backend):
    s = load(artifact("tiny-gemma3", backend=backend))
    with pytest.raises(InputError, match="97 tokens exceed this artifact's max_seq_len of 96"):
        s.prefill([5] * 97)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_kind_of_call(artifact, backend):
    with pytest.raises(InputError, match="is not an encoder"):
        load(artifact("tiny-gemma3", backend=backend)).embed([[2, 3]])


def test_unsupported_recipe_leaves_nothing(tmp_path):
    model = models.build("tiny-gemma3", seed=0)
    encoder = models.build("tiny-embeddinggemma", seed=0)
    for backend in ("executorch", "onnx"):  # LiteRT refuses +emb for every family (test_litert)
        with pytest.raises(ExportError, match=r"recipe 8da4w\+emb4: embedding quantization is for causal LMs"):
            export(encoder, backend, "8da4w+emb4", 32, "portable", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(InputError, match="unknown quantization recipe 'int3'"):
        export(model, "executorch", "int3", 32, "portable", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(InputError, match="no linear layer has in_features divisible by group size 48"):
        export(model, "executorch", "8da4w", 32, "portable", tmp_path / "a", group_size=48, progress=lambda m: None)
    with pytest.raises(ExportError, match=r"weight-only int8 linears are mis-lowered by XNNPACK"):
        export(model, "executorch", "int8", 32, "fused", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(ExportError, match=r"int4\+emb4 on executorch: weight-only int4 .* use --ops fused"):
        export(model, "executorch", "int4+emb4", 32, "portable", tmp_path / "a", progress=lambda m: None)
    for backend in ("executorch", "onnx"):
        with pytest.raises(ExportError, match=rf"recipe fp16 on {backend}: fp16 weights are a LiteRT recipe"):
            export(model, backend, "fp16", 32, "portable", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(InputError, match="unknown backend 'coreml'"):
        export(model, "coreml", "fp32", 32, "portable", tmp_path / "a", progress=lambda m: None)
    with pytest.raises(InputError, match=r"max_seq_len must be in 1\.\.256"):
        export(model, "executorch", "fp32", 1000, "portable", tmp_path / "a", progress=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch):
    from gemma_edge.runtime_py import verify

    monkeypatch.setitem(verify.THRESHOLDS, ("fp32", "*"), {"reference": {"max_abs": 0.0}})
    model = models.build("tiny-gemma3", seed=0)
    with pytest.raises(ExportError, match=r"failed parity: reference\.max_abs = .*needs <= 0"):
        export(model, "onnx", "fp32", 32, "portable", tmp_path / "a", prefill_chunk=4, progress=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_dir_is_not_clobbered(artifact, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        export(models.build("tiny-gemma3"), "executorch", "fp32", 32, "portable", tmp_path / "a", progress=print)


def test_manifest_records_everything(artifact):
    m = json.loads((artifact("tiny-gemma3") / "manifest.json").read_text())
    for key in ("format_version", "family", "config", "backend", "runtime_version", "recipe", "ops",
                "max_seq_len", "methods", "special_tokens", "files", "parity"):  # fmt: skip
        assert key in m
    assert set(m["files"]) == {"model.pte"}
    assert m["methods"]["forward"]["inputs"][0]["name"] == "tokens"
    assert m["special_tokens"]["eos"] == [1, 106]


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_token_ids_of_the_wrong_kind_are_refused(artifact, backend):
    import torch

    s = load(artifact("tiny-gemma3", backend=backend))
    bad = {
        "integers: item 0 is 2.0": [2.0, 17.9], "item 1 is 'a'": [2, "a"], r"item 0 is \[1, 2\]": [[1, 2]],
        "got NoneType": None, "got str": "2 3", "out of range": [2**70], "item 0 is True": [True],
        "1-D integer tensor, got 2-D": torch.zeros(1, 2, dtype=torch.int64),
        "1-D integer tensor, got 1-D torch.float32": torch.ones(2),
    }  # fmt: skip
    for msg, ids in bad.items():
        with pytest.raises(InputError, match=msg):
            s.prefill(ids)
    assert s.pos == 0
    assert torch.equal(s.prefill(torch.tensor([2, 3])), s.reset() or s.prefill([2, torch.tensor(3)]))


def test_embed_input_errors(artifact):
    s = load(artifact("tiny-embeddinggemma", backend="onnx"))
    for bad in ([2, 3], [], "text", None):
        with pytest.raises(InputError, match="embed takes a"):
            s.embed(bad)


@pytest.mark.parametrize("threads", [-1, 0, 1.5, True])
def test_bad_thread_counts_are_refused(artifact, threads):
    with pytest.raises(InputError, match="threads must be a positive integer"):
        load(artifact("tiny-gemma3", backend="executorch"), threads=threads)  # -1 used to abort the process


def _manifest_case(src, tmp_path, name, edit):
    import shutil

    d = tmp_path / name
    shutil.copytree(src, d)
    m = json.loads((d / "manifest.json").read_text())
    m = edit(m, d)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_manifest_integrity(artifact, tmp_path):
    src = artifact("tiny-gemma3", backend="onnx")

    def drop(key):
        return lambda m, d: {k: v for k, v in m.items() if k != key}

    def unlist(m, d):
        m["files"].pop(m["model_file"])
        return m

    def extra(m, d):
        (d / "extra.bin").write_bytes(b"x")
        return m

    cases = {
        "missing required keys files": drop("files"),
        "missing required keys config": drop("config"),
        "model_file 'model.onnx' is not in 'files'": unlist,
        r"files not in the manifest \(not hashed, refused\): extra.bin": extra,
        "expected a JSON object, got list": lambda m, d: [],
        r"wrong types: max_seq_len \(str, expected int\)": lambda m, d: {**m, "max_seq_len": "96"},
        "'config' is not a valid model config: .*missing": lambda m, d: {**m, "config": {}},
        "'config' is not a valid model config: .*vocab_size must be > 0": lambda m, d: {
            **m,
            "config": {**m["config"], "vocab_size": 0},
        },
        r"special_tokens.eos must be a list of token ids, got None": lambda m, d: {**m, "special_tokens": {}},
        "max_seq_len and prefill_chunk must be integers >= 1": lambda m, d: {**m, "max_seq_len": 0},
        "methods.forward must have 'inputs' and 'outputs'": lambda m, d: {**m, "methods": {"forward": {}}},
        "recipe.name must be a string": lambda m, d: {**m, "recipe": {}},
    }
    for i, (msg, edit) in enumerate(cases.items()):
        with pytest.raises(ArtifactError, match=msg):
            load(_manifest_case(src, tmp_path, f"c{i}", edit))

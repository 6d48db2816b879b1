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
    for weight_only in ("int8", "int4+emb4"):
        with pytest.raises(ExportError, match=r"weight-only int[48] linears are mis-lowered by XNNPACK"):
            export(model, "executorch", weight_only, 32, "portable", tmp_path / "a", progress=lambda m: None)
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
        export(model, "executorch", "fp32", 32, "portable", tmp_path / "a", prefill_chunk=4, progress=lambda m: None)
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

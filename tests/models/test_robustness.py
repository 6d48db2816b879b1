"""Malformed inputs a user can hand the loaders: only the library's own error ever escapes, with
the file and key named (hand-picked cases, then hypothesis-mutated config.json, safetensors
headers and manifests)."""

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from gemma_edge import models
from gemma_edge.models import CheckpointError, ConfigError, GemmaEdgeError
from gemma_edge.models.checkpoint import safetensors_header
from gemma_edge.models.hf_config import config_from_hf
from gemma_edge.runtime_py.manifest import read_manifest


@pytest.fixture(scope="module")
def hf_config(hf_causal):
    src, _ = hf_causal("tiny-gemma3")
    return json.loads((src / "config.json").read_text())


@pytest.mark.parametrize(
    "changes, msg",
    [
        ({"sliding_window": 0}, "sliding_window must be >= 1, got 0"),
        ({"vocab_size": 512.7}, "vocab_size must be an integer, got 512.7"),
        ({"vocab_size": None}, "vocab_size must be an integer, got null"),
        ({"sliding_window": None}, "sliding_window must be an integer, got null"),  # not the default 4096
        ({"head_dim": None}, "head_dim must be an integer, got null"),
        ({"hidden_size": "64"}, "hidden_size must be an integer, got '64'"),
        ({"num_hidden_layers": True}, "num_hidden_layers must be an integer, got True"),
        ({"rope_parameters": [1, 2]}, "rope_parameters must be an object"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a number"),
        ({"layer_types": "sliding_attention"}, "layer_types must be a list"),
        ({"final_logit_softcapping": 0.0}, "final_logit_softcapping must be > 0"),
        ({"query_pre_attn_scalar": 0}, "query_pre_attn_scalar must be > 0"),
    ],
)
def test_bad_config_values_are_refused(hf_config, changes, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_hf({**hf_config, **changes}, where="c.json")


@pytest.mark.parametrize("doc", [[], None, "gemma", 3])
def test_config_that_is_not_an_object(doc):
    with pytest.raises(ConfigError, match="expected a JSON object"):
        config_from_hf(doc, where="c.json")


def _header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_header_entry_without_data_offsets(tmp_path):
    f = tmp_path / "model.safetensors"
    _header_file(f, {"w": {"dtype": "F32", "shape": [2]}})
    with pytest.raises(CheckpointError, match="tensor 'w' has no valid data_offsets"):
        safetensors_header(f)


def test_shard_index_that_is_a_list(ckpt):
    (ckpt / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="has no 'weight_map' object"):
        models.load(ckpt)


def test_non_finite_weights_are_refused_at_load(ckpt):
    t = load_file(ckpt / "model.safetensors")
    key = next(k for k in t if k.endswith("q_proj.weight"))
    t[key][0, 0] = float("nan")
    save_file(t, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"non-finite weights \(NaN or inf\).*{key}"):
        models.load(ckpt)


def test_tokenizer_larger_than_the_vocab_is_refused_at_export(tmp_path):
    from gemma_edge.export import export

    spm = pytest.importorskip("sentencepiece")
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"w{i} x{i % 7} y{i % 13} z{i // 10}" for i in range(3000)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "tok"), vocab_size=600,
                                   model_type="bpe", minloglevel=2)  # fmt: skip
    model = models.build("tiny-gemma3", seed=0)  # vocab_size 512
    with pytest.raises(GemmaEdgeError, match="has 600 pieces, more than the model's vocab_size 512"):
        export(model, "onnx", "fp32", 32, "portable", tmp_path / "a", tokenizer_path=tmp_path / "tok.model",
               progress=lambda m: None)  # fmt: skip
    assert not (tmp_path / "a").exists()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(key=st.sampled_from(["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                            "sliding_window", "rope_parameters", "rope_theta", "layer_types", "rms_norm_eps",
                            "max_position_embeddings", "query_pre_attn_scalar", "final_logit_softcapping",
                            "model_type", "num_key_value_heads", "intermediate_size"]),
       value=_json)  # fmt: skip
def test_fuzzed_config_only_raises_config_error(tmp_path_factory, hf_config, key, value):
    d = tmp_path_factory.mktemp("cfg")  # a config.json file on disk, read as a checkpoint's
    (d / "config.json").write_text(json.dumps({**hf_config, key: value}))
    try:
        cfg = models.read_config(d)
    except ConfigError:
        return
    if models.param_counts(cfg)["total"] < 2e7:  # what loaded must also build (absurd sizes aside)
        models.build(cfg)


@_FUZZ
@given(header=st.dictionaries(st.text(max_size=4), _json, max_size=3) | _json, data=st.binary(max_size=64))
def test_fuzzed_safetensors_header_only_raises_checkpoint_error(tmp_path_factory, header, data):
    f = tmp_path_factory.mktemp("st") / "model.safetensors"
    raw = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    try:
        safetensors_header(f)
    except CheckpointError:
        pass


@_FUZZ
@given(edits=st.dictionaries(st.sampled_from(["format_version", "backend", "model_file", "files", "config",
                                              "max_seq_len", "special_tokens", "methods", "recipe", "ops"]),
                             _json, max_size=3))  # fmt: skip
def test_fuzzed_manifest_only_raises_artifact_error(tmp_path_factory, edits):
    from gemma_edge.models import ArtifactError

    d = tmp_path_factory.mktemp("m")
    (d / "model.onnx").write_bytes(b"x")
    # A valid manifest (read_manifest accepts it), so the edits reach every check, hashing included.
    digest = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"  # sha256 of b"x"
    base = {"format_version": 1, "backend": "onnx", "model_file": "model.onnx", "files": {"model.onnx": digest},
            "config": models.get_preset("tiny-gemma3").to_dict(), "max_seq_len": 8, "special_tokens": {"eos": [1]},
            "methods": {}, "recipe": {"name": "fp32"}, "ops": "portable"}  # fmt: skip
    (d / "manifest.json").write_text(json.dumps({**base, **edits}))
    try:
        read_manifest(d)
    except ArtifactError:
        pass


@pytest.mark.parametrize(
    "kw, msg",
    [({"temperature": float("nan")}, "temperature must be a finite number"), ({"temperature": "1"}, "temperature"),
     ({"top_p": float("nan")}, "top_p must be in"), ({"top_k": 1.5}, "top_k must be an integer")],
)  # fmt: skip
def test_sampler_settings_are_checked(kw, msg):
    from gemma_edge.models import InputError
    from gemma_edge.runtime_py.sampling import Sampler

    with pytest.raises(InputError, match=msg):
        Sampler(**kw)


def test_dense_config_without_out_features(hf_embedding, tmp_path):
    src, _ = hf_embedding
    d = tmp_path / "st"
    shutil.copytree(src, d)
    dense = next(p for p in sorted(d.iterdir()) if "Dense" in p.name)
    j = json.loads((dense / "config.json").read_text())
    j.pop("out_features")
    (dense / "config.json").write_text(json.dumps(j))
    with pytest.raises(CheckpointError, match=r"Dense module needs out_features .* got None"):
        models.load(d)

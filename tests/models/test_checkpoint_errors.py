"""Every bad checkpoint raises the library's own error, naming the file or tensor at fault."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge import models
from gemma_edge.models import CheckpointError, ConfigError


def _edit_config(d, **changes):
    j = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            j.pop(k)
        else:
            j[k] = v
    (d / "config.json").write_text(json.dumps(j))


def _edit_weights(d, fn):
    f = d / "model.safetensors"
    t = load_file(f)
    fn(t)
    save_file(t, f)


def test_loads_clean(ckpt):
    assert models.load(ckpt).config.family == "gemma3"


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint directory .*nope does not exist"):
        models.load(tmp_path / "nope")


def test_path_is_a_file(ckpt):
    with pytest.raises(CheckpointError, match="is neither a directory nor a GGUF file"):
        models.load(ckpt / "config.json")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing file .*config\.json"):
        models.load(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        models.load(ckpt)


def test_unknown_model_type(ckpt):
    _edit_config(ckpt, model_type="llama")
    with pytest.raises(ConfigError, match="unknown model_type 'llama'"):
        models.load(ckpt)


def test_unknown_config_key(ckpt):
    _edit_config(ckpt, use_sliding_mystery=True)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['use_sliding_mystery'\]"):
        models.load(ckpt)
    with pytest.warns(UserWarning, match="use_sliding_mystery"):
        models.load(ckpt, allow_unknown_keys=True)


def test_missing_required_config_key(ckpt):
    _edit_config(ckpt, hidden_size=None)
    with pytest.raises(ConfigError, match="missing required key 'hidden_size'"):
        models.load(ckpt)


def test_unsupported_architecture_value(ckpt):
    _edit_config(ckpt, hidden_activation="silu")
    with pytest.raises(ConfigError, match="hidden_activation 'silu'"):
        models.load(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights in"):
        models.load(ckpt)


def test_truncated_weights_file(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        models.load(ckpt)


def test_tiny_truncated_weights_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="shorter than the 8-byte"):
        models.load(ckpt)


def test_corrupt_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"#" * 12
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        models.load(ckpt)


def test_missing_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.pop("model.layers.2.self_attn.k_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors .*model\.layers\.2\.self_attn\.k_norm\.weight"):
        models.load(ckpt)


def test_unexpected_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors .*model\.layers\.0\.extra\.weight"):
        models.load(ckpt)


def test_mis_shaped_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(100, 64)}))
    with pytest.raises(CheckpointError, match=r"up_proj\.weight: expected \(128, 64\), found \(100, 64\)"):
        models.load(ckpt)


def test_config_and_weights_disagree(ckpt):
    _edit_config(ckpt, intermediate_size=256)
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors .*gate_proj\.weight: expected \(256, 64\)"):
        models.load(ckpt)


def test_unsupported_dtype(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.norm.weight": torch.zeros(64, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' has dtype I32"):
        models.load(ckpt)


def test_untied_head_in_tied_checkpoint(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"lm_head.weight": torch.randn(512, 64)}))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from the embedding"):
        models.load(ckpt)


def test_sharded_checkpoint_loads_and_names_missing_shard(hf_causal, tmp_path):
    _, hf = hf_causal("tiny-gemma2")
    d = tmp_path / "sharded"
    hf.save_pretrained(d, max_shard_size="200KB")
    assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("*.safetensors"))) > 1
    ref = models.load(d)
    tokens = torch.randint(0, 512, (1, 12))
    assert (ref(tokens) - hf(tokens, use_cache=False).logits).abs().max().item() <= 1e-4
    shard = sorted(d.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing weights file .*{shard.name}"):
        models.load(d)


def test_tokenizer_errors(ckpt):
    with pytest.raises(CheckpointError, match="missing tokenizer file"):
        models.Tokenizer(ckpt / "absent.model", "gemma3")
    (ckpt / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid SentencePiece model"):
        models.Tokenizer(ckpt / "tokenizer.model", "gemma3")


def test_encoder_layout_errors(hf_embedding, tmp_path):
    src, _ = hf_embedding
    d = tmp_path / "st"
    shutil.copytree(src, d)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(CheckpointError, match="pooling 'max' is not supported"):
        models.load(d)
    shutil.rmtree(d)
    shutil.copytree(src, d)
    (d / "3_Dense" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing weights file .*3_Dense/model\.safetensors"):
        models.load(d)
    shutil.rmtree(d)
    shutil.copytree(src, d)
    (d / "modules.json").unlink()
    with pytest.raises(CheckpointError, match="needs the sentence-transformers layout"):
        models.load(d)

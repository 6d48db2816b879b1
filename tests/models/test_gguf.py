"""GGUF checkpoints: the registry's real Gemma 3 270M against transformers loading the same file,
and tiny GGUFs written as llama.cpp's converter writes them (norms + 1, no head, Q8_0 tensors)."""

import pytest
import torch
from gguf_files import dequantized_like_gguf, write_gguf

from gemma_edge import fixtures, models
from gemma_edge.models import CheckpointError
from gemma_edge.models.gguf import gguf_tokenizer

# Whitespace runs, tabs, accents, CJK, emoji. Chat tokens such as <start_of_turn> are CONTROL in the
# GGUF: SentencePiece (and llama.cpp without --parse-special) splits them in text, transformers
# matches them; they are inserted as ids, not text.
SPECIALS = "  two  spaces, a\ttab, x   \n\n  y émigré 東京 🙂\n\n\n"


@pytest.fixture(scope="session")
def real_gguf():
    return fixtures.real_gemma3_270m()


@pytest.fixture(scope="session")
def real_model(real_gguf):
    return models.load(real_gguf)


@pytest.fixture(scope="session")
def hamlet():
    return fixtures.text("hamlet").read_text(encoding="utf-8")


def test_real_270m_config_and_size(real_model):
    cfg = real_model.config
    assert (cfg.family, cfg.d_model, len(cfg.layer_kinds), cfg.window) == ("gemma3", 640, 18, 512)
    assert cfg.vocab_size == 262144
    assert cfg.layer_kinds.count("global") == 3 and cfg.rope_base == {"local": 10_000.0, "global": 1_000_000.0}
    assert sum(p.numel() for p in real_model.parameters()) == 268_098_176  # the published count


def test_real_270m_matches_transformers(real_gguf, real_model, hamlet, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name, dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    tok = models.Tokenizer(gguf_tokenizer(real_gguf, tmp_path / "t.model"), "gemma3")
    text = hamlet[:20_000] + SPECIALS
    ids = tok.encode(text)
    assert ids == hf_tok(text)["input_ids"]  # the rebuilt SentencePiece model tokenizes as transformers does
    x = torch.tensor([ids[:256]])
    ours, theirs = real_model(x)[0], hf.eval()(x).logits[0]
    assert (ours - theirs).abs().max().item() < 2e-3  # logits reach ~36; fp32 summation order differs
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    assert tok.decode(ids[1:40]) == text[: len(tok.decode(ids[1:40]))]
    assert [tok.sp.piece_to_id(t) for t in ("<start_of_turn>", "<end_of_turn>")] == [105, 106]


@pytest.mark.parametrize("preset,arch", [("tiny-gemma3", "gemma3"), ("tiny-gemma2", "gemma2")])
def test_tiny_gguf_round_trip(hf_causal, preset, arch, tmp_path):
    d, hf = hf_causal(preset)
    src = models.load(d)
    f = write_gguf(src, d / "tokenizer.model", tmp_path / "m.gguf", arch=arch)
    got = models.load(f)
    assert got.config.norm_eps == pytest.approx(src.config.norm_eps)  # stored as fp32
    assert got.config == src.config.replace(norm_eps=got.config.norm_eps)
    want = dequantized_like_gguf(src)
    for n, p in got.named_parameters():
        assert torch.allclose(p, want[n], atol=1e-6), n  # norms' + 1 undone, Q8_0 dequantized
    ids = torch.tensor([[2, 17, 45, 99, 3, 250, 8]])
    with torch.no_grad():
        ref = hf.eval()(ids).logits[0]
    assert (got(ids)[0] - ref).abs().max().item() < 0.05  # Q8_0 weights vs transformers' fp32


def test_tiny_gguf_tokenizer(hf_causal, tmp_path):
    d, _ = hf_causal("tiny-gemma3")
    f = write_gguf(models.load(d), d / "tokenizer.model", tmp_path / "m.gguf", arch="gemma3")
    rebuilt = models.Tokenizer(gguf_tokenizer(f, tmp_path / "t.model"), "gemma3")
    orig = models.Tokenizer(d / "tokenizer.model", "gemma3")
    text = "The quick brown fox jumps over the lazy dog. Export once, run everywhere."
    assert rebuilt.encode(text) == orig.encode(text)
    assert (rebuilt.bos_id, rebuilt.eos_id, rebuilt.pad_id) == (2, 1, 0)


@pytest.fixture
def tiny(hf_causal):
    d, _ = hf_causal("tiny-gemma3")
    return models.load(d), d / "tokenizer.model"


def test_gguf_missing_tensor(tiny, tmp_path):
    f = write_gguf(*tiny, tmp_path / "m.gguf", arch="gemma3", drop="backbone.layers.1.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match=r"missing tensors in .*m\.gguf.*layers\.1\.mlp\.up_proj"):
        models.load(f)


def test_gguf_unexpected_tensor(tiny, tmp_path):
    f = write_gguf(*tiny, tmp_path / "m.gguf", arch="gemma3", extra="blk.0.attn_qkv.weight")
    with pytest.raises(CheckpointError, match=r"unexpected tensors in .*m\.gguf.*blk\.0\.attn_qkv\.weight"):
        models.load(f)


def test_gguf_truncated(tiny, tmp_path):
    f = write_gguf(*tiny, tmp_path / "m.gguf", arch="gemma3")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.gguf is truncated or corrupt"):
        models.load(f)


def test_gguf_wrong_architecture(tiny, tmp_path):
    f = write_gguf(*tiny, tmp_path / "m.gguf", arch="llama")
    with pytest.raises(CheckpointError, match=r"GGUF architecture 'llama' is not supported"):
        models.load(f)


def test_not_a_gguf_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="neither a directory nor a GGUF file"):
        models.load(f)


def test_gguf_with_non_finite_weights_is_refused(tiny, tmp_path):
    model, tok = tiny
    with torch.no_grad():
        model.backbone.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    f = write_gguf(model, tok, tmp_path / "m.gguf", arch="gemma3", quantize=False)
    with pytest.raises(CheckpointError, match=r"non-finite.*blk\.0\.ffn_down\.weight"):
        models.load(f)

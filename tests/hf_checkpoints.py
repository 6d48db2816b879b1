"""Tiny random checkpoints written by Hugging Face transformers itself (the numerical oracle).

Each helper turns one of our tiny presets into the equivalent transformers config, randomises
every parameter (norm weights and biases too, which transformers initialises to zero), saves the
checkpoint directory and returns the transformers model for comparison.
"""

from __future__ import annotations

import io
from itertools import pairwise
from pathlib import Path

import sentencepiece as spm
import torch
import transformers as T

from gemma_edge.models import get_preset

_HF_KIND = {"global": "full_attention", "local": "sliding_attention"}
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Gemma runs on phones and edge boards. "
    "Sliding window attention keeps a ring buffer; the recurrence keeps a small state. "
    "Numbers 0123456789 and punctuation, of course! Export once, run everywhere. "
) * 20


def write_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A SentencePiece model with Gemma's special ids: pad 0, eos 1, bos 2, unk 3."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.split(". ")), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, add_dummy_prefix=False,
        byte_fallback=False, character_coverage=1.0, minloglevel=2, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
    )  # fmt: skip
    path.write_bytes(buf.getvalue())
    return path


@torch.no_grad()
def _randomise(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("recurrent_param"):
            continue  # keep transformers' Griffin initialisation (a in [0.9, 0.999])
        p.copy_(torch.randn(p.shape, generator=g) * std)


def hf_config(preset: str, **over):
    cfg = get_preset(preset)
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
    )  # fmt: skip
    if cfg.family == "recurrentgemma":
        c = T.RecurrentGemmaConfig(
            **common, intermediate_size=2 * cfg.ffn_dim, lru_width=cfg.lru_width, attention_window_size=cfg.window,
            conv1d_width=cfg.conv_width, logits_soft_cap=cfg.final_softcap,
            block_types=["recurrent", "recurrent", "attention"],
        )  # fmt: skip
    elif cfg.family == "gemma2":
        c = T.Gemma2Config(
            **common, head_dim=cfg.head_dim, intermediate_size=cfg.ffn_dim, sliding_window=cfg.window,
            query_pre_attn_scalar=int(cfg.query_scale), attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap, layer_types=[_HF_KIND[k] for k in cfg.layer_kinds],
        )  # fmt: skip
    else:
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_base["local"]},
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_base["global"]},
        }
        if "global" in cfg.rope_scaling:
            rope["full_attention"] = {"rope_type": "linear", "factor": cfg.rope_scaling["global"],
                                      "rope_theta": cfg.rope_base["global"]}  # fmt: skip
        c = T.Gemma3TextConfig(
            **common, head_dim=cfg.head_dim, intermediate_size=cfg.ffn_dim, sliding_window=cfg.window,
            query_pre_attn_scalar=int(cfg.query_scale), layer_types=[_HF_KIND[k] for k in cfg.layer_kinds],
            rope_parameters=rope, use_bidirectional_attention=not cfg.causal,
        )  # fmt: skip
    for k, v in over.items():
        setattr(c, k, v)
    c._attn_implementation = "eager"
    return c


def write_causal(preset: str, out: Path, seed: int = 0, dtype=torch.float32, **over):
    """Save a transformers causal LM for ``preset`` to ``out``; return the (fp32, eval) HF model."""
    c = hf_config(preset, **over)
    cls = {"recurrent_gemma": T.RecurrentGemmaForCausalLM, "gemma2": T.Gemma2ForCausalLM}.get(
        c.model_type, T.Gemma3ForCausalLM
    )
    torch.manual_seed(seed)
    model = cls(c).eval()
    _randomise(model, seed)
    model.to(dtype).save_pretrained(out)
    write_tokenizer(out / "tokenizer.model")
    return model.float()


def write_embedding(out: Path, seed: int = 0, preset: str = "tiny-embeddinggemma"):
    """Save a sentence-transformers EmbeddingGemma (Gemma3TextModel, bidirectional) to ``out``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as stm

    cfg = get_preset(preset)
    hf_dir = out.parent / (out.name + "-hf")
    torch.manual_seed(seed)
    backbone = T.Gemma3TextModel(hf_config(preset)).eval()
    _randomise(backbone, seed)
    backbone.save_pretrained(hf_dir)
    write_tokenizer(hf_dir / "tokenizer.model")
    tok = T.GemmaTokenizer.from_pretrained(str(hf_dir), add_bos_token=True, add_eos_token=True, padding_side="right")
    tok.save_pretrained(hf_dir)
    transformer = stm.Transformer(str(hf_dir), model_kwargs={"attn_implementation": "eager"})
    dims = (cfg.d_model, *cfg.dense_dims)
    modules = [transformer, stm.Pooling(cfg.d_model, pooling_mode="mean")]
    g = torch.Generator().manual_seed(seed + 1)
    for a, b in pairwise(dims):
        dense = stm.Dense(a, b, bias=False, activation_function=torch.nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(torch.randn(b, a, generator=g) * 0.1)
        modules.append(dense)
    modules.append(stm.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(str(out))
    (out / "tokenizer.model").write_bytes((hf_dir / "tokenizer.model").read_bytes())
    return st

"""Tiny GGUF files written the way llama.cpp's converter writes Gemma: norms stored as 1 + w, no
head, tokenizer as token/score/type arrays, some tensors quantized (Q8_0) by the gguf package."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from gemma_edge.models.gguf import GGUF_KEYMAP


def _gguf_name(ours: str) -> tuple[str, bool]:
    """Invert the loader's key map: our parameter name -> (GGUF tensor name, stored as 1 + w)."""
    for gg, ours_t, norm in GGUF_KEYMAP:
        m = re.fullmatch(re.escape(ours_t).replace(r"\{0\}", r"(\d+)"), ours)
        if m:
            layer = m.group(1) if m.groups() else ""
            return gg.replace(r"(\d+)", layer).replace("\\", ""), norm
    raise KeyError(ours)


def write_gguf(model, tokenizer: Path, path: Path, *, arch: str, quantize: bool = True,
               drop: str | None = None, extra: str | None = None) -> Path:  # fmt: skip
    """Write our gemma2/gemma3 ``model`` as llama.cpp would (``drop``: leave one tensor out;
    ``extra``: add an unknown tensor)."""
    cfg = model.config
    w = GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(len(cfg.layer_kinds))
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_base["global"])
    w.add_sliding_window(cfg.window)
    if arch == "gemma3":
        w.add_sliding_window_pattern([k == "local" for k in cfg.layer_kinds])
        w.add_rope_freq_base_swa(cfg.rope_base["local"])
        if "global" in cfg.rope_scaling:
            from gguf import RopeScalingType

            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(cfg.rope_scaling["global"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_softcap)
        w.add_final_logit_softcapping(cfg.final_softcap)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    toks = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1 for i in range(len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([sp.get_score(i) for i in range(len(toks))])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    for ours, p in model.named_parameters():
        if ours == drop:
            continue
        name, norm = _gguf_name(ours)
        a = (p.detach() + 1.0 if norm else p.detach()).numpy().astype(np.float32)
        if quantize and a.ndim == 2 and a.shape[1] % 32 == 0 and "embd" not in name:
            q = quants.quantize(a, GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    if extra:
        w.add_tensor(extra, np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dequantized_like_gguf(model) -> dict[str, torch.Tensor]:
    """Our parameters as the GGUF stores them, read back (Q8_0 round trip for the 2-D ones)."""
    out = {}
    for ours, p in model.named_parameters():
        name, _ = _gguf_name(ours)
        a = p.detach().numpy().astype(np.float32)
        if a.ndim == 2 and a.shape[1] % 32 == 0 and "embd" not in name:
            a = quants.dequantize(quants.quantize(a, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
        out[ours] = torch.from_numpy(np.ascontiguousarray(a))
    return out

"""Strict loading of llama.cpp GGUF files of Gemma 2 and Gemma 3 (text).

What llama.cpp's ``convert_hf_to_gguf.py`` does to a Gemma checkpoint, and this reader undoes:

- every RMSNorm weight is stored as ``1 + w`` (the four per-layer norms, q_norm, k_norm and the
  final norm): we subtract 1, since our RMSNorm (like transformers') multiplies by ``1 + w``;
- the head is tied and not written;
- the tokenizer is stored as ``tokenizer.ggml.tokens/scores/token_type`` arrays, which
  ``gguf_tokenizer`` rebuilds into a SentencePiece model (see there for the two fixes needed);
- quantized tensors (Q8_0, Q5_0, Q4_K, Q6_K, ...) are dequantized to fp32 with the ``gguf``
  package, so the model loaded here is exactly the one llama.cpp runs at those weights.

Config values older converters do not write (local RoPE base, layer pattern, query scale) take the
defaults llama.cpp itself uses for the architecture, which are the published configs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .presets import gemma2_kinds, gemma3_kinds

__all__ = ["is_gguf", "read_gguf_config", "load_gguf", "gguf_tokenizer", "GGUF_KEYMAP"]

_MAGIC = b"GGUF"
_MAX_LISTED = 8

# GGUF tensor name -> our parameter name (regex groups fill {0}, ...), and whether it is an RMSNorm
# weight that the converter stored as 1 + w.
_B = r"blk\.(\d+)\."
GGUF_KEYMAP: list[tuple[str, str, bool]] = [
    (r"token_embd\.weight", "backbone.embed.weight", False),
    (r"output_norm\.weight", "backbone.final_norm.weight", True),
    (_B + r"attn_norm\.weight", "backbone.layers.{0}.pre_norm.weight", True),
    (_B + r"post_attention_norm\.weight", "backbone.layers.{0}.post_norm.weight", True),
    (_B + r"ffn_norm\.weight", "backbone.layers.{0}.pre_ffn_norm.weight", True),
    (_B + r"post_ffw_norm\.weight", "backbone.layers.{0}.post_ffn_norm.weight", True),
    (_B + r"attn_q\.weight", "backbone.layers.{0}.temporal.q_proj.weight", False),
    (_B + r"attn_k\.weight", "backbone.layers.{0}.temporal.k_proj.weight", False),
    (_B + r"attn_v\.weight", "backbone.layers.{0}.temporal.v_proj.weight", False),
    (_B + r"attn_output\.weight", "backbone.layers.{0}.temporal.o_proj.weight", False),
    (_B + r"attn_q_norm\.weight", "backbone.layers.{0}.temporal.q_norm.weight", True),
    (_B + r"attn_k_norm\.weight", "backbone.layers.{0}.temporal.k_norm.weight", True),
    (_B + r"ffn_gate\.weight", "backbone.layers.{0}.mlp.gate_proj.weight", False),
    (_B + r"ffn_up\.weight", "backbone.layers.{0}.mlp.up_proj.weight", False),
    (_B + r"ffn_down\.weight", "backbone.layers.{0}.mlp.down_proj.weight", False),
]
_COMPILED = [(re.compile(p + r"\Z"), t, n) for p, t, n in GGUF_KEYMAP]
_ARCHS = {"gemma2": "gemma2", "gemma3": "gemma3"}
# SentencePiece piece types (sentencepiece_model.proto); llama.cpp's token types use the same numbers.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == _MAGIC


def _reader_class():
    import gguf

    class Reader(gguf.GGUFReader):
        """GGUFReader reading through a plain ndarray view of its memmap: the memmap subclass's
        per-item overhead makes parsing the 262k tokenizer strings take 20 s instead of 2."""

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset : offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return Reader


def _reader(path: Path):

    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    if not is_gguf(path):
        raise CheckpointError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
    try:
        return _reader_class()(str(path))
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError on corrupt files
        raise CheckpointError(f"{path} is truncated or corrupt: {type(e).__name__}: {e}") from None


def _field(r, key: str, path: Path, default=None, required: bool = False):
    f = r.fields.get(key)
    if f is None:
        if required:
            raise CheckpointError(f"{path}: missing GGUF metadata key {key!r}")
        return default
    return f.contents()


def _config(r, path: Path) -> ModelConfig:
    arch = _field(r, "general.architecture", path, required=True)
    if arch not in _ARCHS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (gemma2, gemma3)")

    def need(k):
        return _field(r, f"{arch}.{k}", path, required=True)

    def opt(k, d=None):
        return _field(r, f"{arch}.{k}", path, d)

    n, d, heads = int(need("block_count")), int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(opt("attention.key_length", d // heads))
    emb = next((t for t in r.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise CheckpointError(f"{path}: missing tensor 'token_embd.weight'")
    vocab = int(emb.shape[1])
    # llama.cpp: the 27B models scale queries by 1/sqrt(d_model / heads), the others by 1/sqrt(head_dim).
    big = (arch, n) in (("gemma2", 46), ("gemma3", 62))
    query_scale = float(d // heads if big else head_dim)
    common = dict(
        vocab_size=vocab, d_model=d, num_heads=heads, num_kv_heads=int(opt("attention.head_count_kv", heads)),
        head_dim=head_dim, ffn_dim=int(need("feed_forward_length")), window=int(opt("attention.sliding_window", 4096)),
        max_seq_len=int(opt("context_length", 8192)), query_scale=query_scale,
        norm_eps=float(opt("attention.layer_norm_rms_epsilon", 1e-6)), tie_embeddings=True,
    )  # fmt: skip
    base = float(opt("rope.freq_base", 10_000.0))
    if arch == "gemma2":
        return ModelConfig(
            family="gemma2", layer_kinds=gemma2_kinds(n), rope_base={"local": base, "global": base},
            attn_softcap=opt("attn_logit_softcapping"), final_softcap=opt("final_logit_softcapping"), **common,
        )  # fmt: skip
    pattern = opt("attention.sliding_window_pattern", 6)  # newer converters: every Nth global, or a per-layer list
    if isinstance(pattern, list):
        if len(pattern) != n:
            raise CheckpointError(f"{path}: sliding_window_pattern has {len(pattern)} entries for {n} layers")
        kinds = tuple("local" if s else "global" for s in pattern)
    else:
        kinds = gemma3_kinds(n, int(pattern))
    scaling = {}
    if opt("rope.scaling.type") == "linear" and float(opt("rope.scaling.factor", 1.0)) != 1.0:
        scaling = {"global": float(opt("rope.scaling.factor"))}  # llama.cpp scales the global layers only
    return ModelConfig(
        family="gemma3", layer_kinds=kinds, rope_scaling=scaling,
        rope_base={"local": float(opt("rope.freq_base_swa", 10_000.0)), "global": base}, qk_norm=True, **common,
    )  # fmt: skip


def read_gguf_config(path: str | Path) -> ModelConfig:
    """The ModelConfig a GGUF file describes, without dequantizing its tensors."""
    p = Path(path)
    return _config(_reader(p), p)


def _ours(name: str) -> tuple[str, bool] | None:
    for rx, tmpl, is_norm in _COMPILED:
        m = rx.match(name)
        if m:
            return tmpl.format(*m.groups()), is_norm
    return None


def _problems(title: str, items: list[str]) -> str:
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{title}: " + "; ".join(items[:_MAX_LISTED]) + more


def _dequantize(t, path: Path) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    try:
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            a = quants.dequantize(t.data, t.tensor_type) if t.tensor_type == GGMLQuantizationType.BF16 else t.data
            return np.asarray(a, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
        return quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    except NotImplementedError:
        kind = t.tensor_type.name
        raise CheckpointError(f"{path}: tensor {t.name!r} has type {kind}, which gguf cannot dequantize") from None


def load_gguf(path: str | Path) -> nn.Module:
    """Build the model a GGUF file describes and load its (dequantized) weights (fp32, eval mode)."""
    from .build import build

    p = Path(path)
    r = _reader(p)
    cfg = _config(r, p)
    model = build(cfg)
    params = dict(model.named_parameters())
    found: dict[str, tuple[object, bool]] = {}
    unexpected = []
    for t in r.tensors:
        m = _ours(t.name)
        if m is None or m[0] not in params:
            unexpected.append(t.name)
        else:
            found[m[0]] = (t, m[1])
    missing = sorted(set(params) - set(found))
    errors = []
    if missing:
        errors.append(_problems(f"missing tensors in {p} (our names)", missing))
    if unexpected:
        errors.append(_problems(f"unexpected tensors in {p}", unexpected))
    if errors:
        raise CheckpointError(" | ".join(errors))
    bad = []
    with torch.no_grad():
        for name, (t, is_norm) in found.items():
            shape = tuple(reversed([int(x) for x in t.shape.tolist()]))
            if shape != tuple(params[name].shape):
                bad.append(f"{t.name}: expected {tuple(params[name].shape)}, found {shape}")
                continue
            w = torch.from_numpy(np.require(_dequantize(t, p).reshape(shape), requirements="W"))
            params[name].copy_(w - 1.0 if is_norm else w)  # the converter stored 1 + w
    if bad:
        raise CheckpointError(_problems(f"mis-shaped tensors in {p}", bad))
    from .checkpoint import check_finite

    check_finite(model, p, {name: t.name for name, (t, _) in found.items()})
    return model.eval()


def gguf_tokenizer(path: str | Path, out_file: str | Path) -> Path:
    """Rebuild the SentencePiece model stored in a GGUF's tokenizer arrays; write it to ``out_file``.

    Two things llama.cpp's converter changed are put back: it replaced "▁" by a space in the added
    whitespace tokens, and it typed ``<unk>`` as CONTROL. The model is BPE with byte fallback (when
    the 256 byte pieces are there), no
    dummy prefix and no whitespace normalisation, as Gemma's tokenizer is.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    p = Path(path)
    r = _reader(p)
    if _field(r, "tokenizer.ggml.model", p) != "llama":
        raise CheckpointError(f"{p}: tokenizer.ggml.model is not 'llama' (SentencePiece); cannot rebuild it")
    tokens = _field(r, "tokenizer.ggml.tokens", p, required=True)
    scores = _field(r, "tokenizer.ggml.scores", p, required=True)
    types = _field(r, "tokenizer.ggml.token_type", p, required=True)
    if not len(tokens) == len(scores) == len(types):
        raise CheckpointError(f"{p}: tokenizer arrays differ in length ({len(tokens)}, {len(scores)}, {len(types)})")
    unk = int(_field(r, "tokenizer.ggml.unknown_token_id", p, 3))
    m = pb.ModelProto()
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types)):
        typ = int(typ)
        if i == unk:
            typ = _UNKNOWN
        elif typ == _USER_DEFINED and tok.strip(" ") == "":
            tok = tok.replace(" ", "\u2581")
        m.pieces.add(piece=tok, score=float(score), type=typ)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = sum(int(t) == _BYTE for t in types) == 256  # Gemma's <0x00>..<0xFF>
    # SentencePiece finds its special ids by piece name.
    for kind, key, default in (("unk", "unknown", 3), ("bos", "bos", 2), ("eos", "eos", 1), ("pad", "padding", 0)):
        i = unk if kind == "unk" else int(_field(r, f"tokenizer.ggml.{key}_token_id", p, default))
        setattr(ts, f"{kind}_id", i)
        setattr(ts, f"{kind}_piece", str(tokens[i]))
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(_field(r, "tokenizer.ggml.add_space_prefix", p, False))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    out = Path(out_file)
    out.write_bytes(m.SerializeToString())
    return out

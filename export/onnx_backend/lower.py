"""torch.onnx.export (dynamo) of a prepared model into the staging directory."""

from __future__ import annotations

import json
from pathlib import Path

import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim

from gemma_edge.models.errors import ExportError
from gemma_edge.quant import Recipe

from .contrib import _translations, lookup_scales, store_scales_fp16, strip_source_metadata
from .files import GENAI_TYPES, genai_config, write_ort_format
from .stateful import use_stateful_ops, uses_cached_attention
from .wrappers import GENAI_RING_SLACK, MODEL_FILE, OPSET, ORT_FILE, OnnxCausal, OnnxEncoder, state_names


def _causal(model: nn.Module, max_seq_len: int, prefill_chunk: int):
    """(wrapper, example inputs, dynamic shapes, input names, output names, methods) of a causal LM."""
    cfg = model.config
    if uses_cached_attention(model):  # RoPE tables as long as this artifact's positions
        use_stateful_ops(model, max_seq_len)
    state = [t for s in model.init_state(1, max_seq_len, ring_extra=GENAI_RING_SLACK) for t in s]
    names = state_names(cfg)
    # Examples inside each dim's range and not 1 (torch.export specialises 1); a range of one
    # value (prefill_chunk 1, max_seq_len 1) is a static axis.
    T = min(2, prefill_chunk)
    total_len = min(T + 3, max_seq_len)
    example = (torch.zeros(1, T, dtype=torch.long), torch.ones(1, total_len, dtype=torch.long), state)
    seq = Dim("sequence_length", min=1, max=prefill_chunk) if prefill_chunk > 1 else None
    total = Dim("total_sequence_length", min=1, max=max_seq_len) if max_seq_len > 1 else None
    dynamic = ({1: seq} if seq else None, {1: total} if total else None, [None] * len(state))
    in_names = ["input_ids", "attention_mask", *[n for n, _ in names]]
    out_names = ["logits", *[n for _, n in names]]
    spec = lambda n, t: {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}  # noqa: E731
    signature = {
        "inputs": [
            {"name": "input_ids", "shape": [1, f"1..{prefill_chunk}"], "dtype": "int64"},
            {"name": "attention_mask", "shape": [1, "past + T"], "dtype": "int64"},
            *[spec(n, t) for (n, _), t in zip(names, state)],
        ],
        "outputs": [
            {"name": "logits", "shape": [1, 1, cfg.vocab_size], "dtype": "float32"},
            *[spec(o, t) for (_, o), t in zip(names, state)],
        ],
    }
    return OnnxCausal(model).eval(), example, dynamic, in_names, out_names, {"forward": signature}


def _encoder(model: nn.Module, max_seq_len: int):
    example = (torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    seq = Dim("sequence_length", min=1, max=max_seq_len)
    methods = {
        "embed": {
            "inputs": [
                {"name": "input_ids", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
                {"name": "attention_mask", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
            ],
            "outputs": [{"name": "sentence_embedding", "shape": [1, model.config.embed_dim], "dtype": "float32"}],
        }
    }
    return (
        OnnxEncoder(model).eval(),
        example,
        ({1: seq}, {1: seq}),
        ["input_ids", "attention_mask"],
        ["sentence_embedding"],
        methods,
    )


def lower(model: nn.Module, *, max_seq_len: int, prefill_chunk: int, metadata: dict, recipe: Recipe, out: Path,
          progress=lambda msg: None, ort_format: bool = False, quant_layout: dict | None = None) -> dict:  # fmt: skip
    """Export to ``out/model.onnx`` (+ external data, and ``model.ort`` if asked); return the method
    signatures (with ``quant_layout``, what prepare() quantized, on the first)."""
    import warnings

    cfg = model.config
    path = out / MODEL_FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        parts = _causal(model, max_seq_len, prefill_chunk) if cfg.causal else _encoder(model, max_seq_len)
        wrapper, example, dynamic, in_names, out_names, methods = parts
        progress("torch.onnx.export (dynamo)")
        program = torch.onnx.export(
            wrapper, example, dynamo=True, input_names=in_names, output_names=out_names,
            dynamic_shapes=dynamic, custom_translation_table=_translations(), optimize=True, verbose=False,
            opset_version=OPSET,
        )  # fmt: skip
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        store_scales_fp16(program.model)
        lookup_scales(program.model)
        strip_source_metadata(program.model)
        progress(f"write {MODEL_FILE} (+ external data)")
        # Page-aligned tensors of 1 MiB and more: ONNX Runtime maps those from the file instead of
        # reading them into its own memory (the session then drops the pages MLAS has repacked).
        ir.save(program.model, path, external_data=f"{MODEL_FILE}.data", alignment=4096)
    if ort_format:
        progress(f"write {ORT_FILE} (ORT format, extended optimizations)")
        write_ort_format(path, out / ORT_FILE)
    if cfg.family in GENAI_TYPES:
        (out / "genai_config.json").write_text(json.dumps(genai_config(cfg, max_seq_len, metadata), indent=2))
    if cfg.causal:
        methods["forward"]["attention"] = "GroupQueryAttention" if uses_cached_attention(model) else "portable"
    if quant_layout:
        next(iter(methods.values()))["quantization"] = quant_layout
    return methods

"""ONNX lowering: torch.onnx.export(dynamo=True) with the state as explicit inputs and outputs.

Causal LMs take onnxruntime-genai's names: ``input_ids`` [1, T] int64, ``attention_mask``
[1, P + T] int64 (its length gives the start position P; batch 1, no padding), then per layer
``past_key_values.N.key`` / ``.value`` (attention: [1, kvH, S, hd], S = window for local layers,
max_seq_len for global ones) or ``past_conv.N`` / ``past_rglru.N`` (recurrent), and return
``logits`` [1, 1, vocab] (the last position only) with ``present.*`` of the same shapes. The
encoder takes ``input_ids`` and ``attention_mask`` and returns ``sentence_embedding`` [1, dim], normalised.

Gemma 2 / Gemma 3 artifacts carry a ``genai_config.json``, so onnxruntime-genai generates from them
(with ``max_length`` = the artifact's max_seq_len, since its buffers must match the graph's); it has
no RG-LRU state or encoder support, so RecurrentGemma and EmbeddingGemma artifacts have none.

``--ops fused`` lowers attention to GroupQueryAttention (RoPE, softcap, window and window-sized cache
inside the kernel; head sizes that are multiples of 16) and Griffin's conv to CausalConvWithState.
The RG-LRU scan stays in standard ops (its loop-free closed form): ONNX Runtime has no such kernel and
its wheel ships no headers to compile a custom-op library against.

Quantized recipes become MatMulNBits (and GatherBlockQuantized for ``+emb4``) through
``custom_translation_table``; weights go to external data (``model.onnx.data``).
"""

from __future__ import annotations

from importlib.metadata import version
from types import SimpleNamespace
from typing import ClassVar

from ..backend import FunctionBackend, LowerRequest, Prepared
from .contrib import store_scales_fp16
from .files import GENAI_TYPES, genai_config, write_ort_format
from .lower import lower
from .prepare import FusedRMSNorm, check_supported, gqa_fits, prepare
from .wrappers import DATA_FILE, GENAI_RING_SLACK, MODEL_FILE, OPSET, ORT_FILE, OnnxCausal, OnnxEncoder, state_names

__all__ = [
    "OnnxBackend", "OnnxCausal", "OnnxEncoder", "FusedRMSNorm", "check_supported", "prepare", "lower",
    "runtime_version", "state_names", "gqa_fits", "genai_config", "write_ort_format", "store_scales_fp16",
    "MODEL_FILE", "ORT_FILE", "DATA_FILE", "OPSET", "GENAI_RING_SLACK", "GENAI_TYPES",
]  # fmt: skip


def runtime_version() -> str:
    return version("onnxruntime")


class OnnxBackend(FunctionBackend):
    """Its prepare() returns a Prepared (the quantization layout in its notes), and lower() takes the
    ONNX-only options."""

    name, model_file = "onnx", MODEL_FILE
    options: ClassVar[dict[str, str]] = {"ort_format": "also write model.ort, which ONNX Runtime Mobile loads"}
    steps = SimpleNamespace(runtime_version=runtime_version, check_supported=check_supported)

    def prepare(self, model, recipe, ops, *, copy_model=True, calibration=None) -> Prepared:
        return prepare(model, recipe, ops, copy_model=copy_model, calibration=calibration)

    def lower(self, prepared: Prepared, req: LowerRequest, progress=lambda msg: None) -> dict:
        return lower(prepared.model, max_seq_len=req.max_seq_len, prefill_chunk=req.prefill_chunk,
                     metadata=req.metadata, recipe=req.recipe, out=req.out, progress=progress,
                     ort_format=bool(req.options.get("ort_format")),
                     quant_layout=prepared.notes.get("quantization"))  # fmt: skip

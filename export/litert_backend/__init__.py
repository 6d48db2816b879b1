"""LiteRT lowering: litert_torch.convert with litert-torch's generative signature conventions.

Causal LMs get signatures ``prefill_{T}`` (T = the prefill chunk) and ``decode`` (T = 1), with inputs
``tokens`` [1, T] int32, ``input_pos`` [T] int32 and the state as explicit tensors, returned updated
alongside ``logits`` [1, 1, vocab] (the last position): ``kv_cache_k_{i}`` / ``kv_cache_v_{i}``
[1, kvH, S, hd] per attention layer (S = window for local layers, a ring; max_seq_len for global
ones) and ``conv_state_{i}`` / ``rglru_state_{i}`` per recurrent layer. The encoder gets ``embed``
over ``tokens`` and ``attention_mask`` [1, max_seq_len] int32 (right padding) -> ``embedding``.

``--ops fused`` wraps each of our two ops in a named STABLEHLO_COMPOSITE
(``gemma_edge.sliding_window_attention``, ``gemma_edge.rg_lru``) whose decomposition is the reference
math, so the stock interpreter runs it and a delegate can match the name; ``--ops portable`` emits
TFLite builtins only.

Quantization runs ai-edge-quantizer on the converted flatbuffer: ``int8`` -> weight-only int8 per
channel, ``int4`` and ``8da4w`` -> dynamic int4 in blocks of the group size (32 or 128; LiteRT's int4
kernels quantize activations on the fly), ``fp16`` -> fp16 weights.
"""

from __future__ import annotations

from importlib.metadata import version
from types import SimpleNamespace

from ..backend import FunctionBackend
from .lower import lower
from .prepare import check_supported, prepare
from .quantize import DYNAMIC, QUANT
from .reference import _artifact_weights, composite_names, eager_quantized, signature_ops
from .wrappers import MODEL_FILE, LiteRTCausal, LiteRTEncoder, state_names

__all__ = [
    "LiteRTBackend", "LiteRTCausal", "LiteRTEncoder", "check_supported", "prepare", "lower", "runtime_version",
    "state_names", "eager_quantized", "composite_names", "signature_ops", "QUANT", "DYNAMIC", "MODEL_FILE",
    "_artifact_weights",
]  # fmt: skip


# litert-torch names every tensor of the .tflite after the module classes it came from: give the
# wrappers their public path, so an artifact does not depend on which file of the package holds them.
LiteRTCausal.__module__ = LiteRTEncoder.__module__ = __name__


def runtime_version() -> str:
    return version("ai-edge-litert")


class LiteRTBackend(FunctionBackend):
    name, model_file = "litert", MODEL_FILE
    # XNNPACK holds an arena per signature: prefill_128's is 24 MiB beside the decode's, on the 270M
    # and the 1B alike; prefill_32 brings the 1B's peak RSS from 1.31x to 1.27x its file, for a
    # prefill at 0.85-0.94x (270M) and 0.87-0.88x (1B) and the same decode (benchmarks/README.md,
    # "LiteRT's prefill chunk"). --prefill-chunk 128 buys the prefill back with the memory.
    prefill_chunk = 32
    steps = SimpleNamespace(
        runtime_version=runtime_version, check_supported=check_supported, prepare=prepare, lower=lower
    )

    def bundle(self, d, manifest, tokenizer, progress=lambda msg: None) -> dict:
        """``model.litertlm`` for LiteRT-LM (litertlm.py), for a causal LM with a tokenizer."""
        if tokenizer is None or "decode" not in manifest["methods"]:
            return {}
        from .litertlm import LITERTLM_FILE, write_litertlm

        progress(f"LiteRT-LM bundle: {LITERTLM_FILE}")
        window = manifest["config"].get("window")
        return {"litertlm": write_litertlm(d, family=manifest["family"], special=manifest["special_tokens"],
                                           max_seq_len=manifest["max_seq_len"], window=window,
                                           decode_inputs=manifest["methods"]["decode"]["inputs"],
                                           tokenizer=d / "tokenizer.model")}  # fmt: skip

    def lowering_reference(self, model, recipe, ops, artifact_dir, prepared=None, calibration=None):
        """Quantization happens after lowering: the artifact's own weights, read back (reference.py),
        into the prepared model (whose norms carry the smoothing scales)."""
        if prepared is None:
            prepared = self.prepare(model, recipe, ops, calibration=calibration)
        return eager_quantized(prepared.model, recipe, artifact_dir)

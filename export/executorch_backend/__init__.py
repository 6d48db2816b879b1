"""ExecuTorch lowering: torch.export -> to_edge_transform_and_lower (XNNPACK) -> to_executorch.

Causal LMs get one method, ``forward(tokens[1, T] int64, input_pos[1] int64) -> logits[1, vocab]``
with T dynamic up to the prefill chunk, the state (KV rings, global caches, conv tails, RG-LRU
states) held in mutable buffers inside the program, and the constant methods ExecuTorch's LLM
runner reads (get_max_seq_len = prefill chunk, get_max_context_len, get_bos_id, get_eos_ids,
get_vocab_size, use_kv_cache, enable_dynamic_shape). Only the last position's logits are computed.
The encoder gets ``embed(tokens[1, T], attention_mask[1, T]) -> embedding[1, dim]``.
"""

from __future__ import annotations

from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from gemma_edge.models.errors import InputError

from ..backend import FunctionBackend, LowerRequest, Prepared
from .lower import decompose_gelu, lower
from .prepare import MatmulRMSNorm, check_supported, prepare
from .wrappers import MODEL_FILE, ExecuTorchCausal, ExecuTorchEncoder

__all__ = [
    "ExecuTorchBackend", "ExecuTorchCausal", "ExecuTorchEncoder", "MatmulRMSNorm", "check_supported", "prepare",
    "lower", "runtime_version", "decompose_gelu", "MODEL_FILE", "KV_CACHE_DTYPES",
]  # fmt: skip


def runtime_version() -> str:
    return version("executorch")


KV_CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "q8": torch.int8}


class ExecuTorchBackend(FunctionBackend):
    name, model_file = "executorch", MODEL_FILE
    steps = SimpleNamespace(
        runtime_version=runtime_version, check_supported=check_supported, prepare=prepare, lower=lower
    )
    options: ClassVar[dict[str, str]] = {
        "kv_cache": "the attention caches' dtype: fp32 (default), fp16 (half the state memory) or q8 (int8 codes in "
                    "groups of 32 with fp16 scales, as llama.cpp's q8_0: 0.53x fp16); fp16 and q8 need --ops fused",
    }

    def check_options(self, options: dict[str, Any], ops: str = "portable") -> None:
        super().check_options(options, ops)
        kv = options.get("kv_cache", "fp32")
        if kv not in KV_CACHE_DTYPES:
            raise InputError(f"kv_cache must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv!r}")
        if kv != "fp32" and ops != "fused":
            raise InputError(f"kv_cache {kv} needs --ops fused: the fused attention kernels read an {kv} cache "
                             "in place, the portable attention would convert whole caches every step")  # fmt: skip

    def lower(self, prepared: Prepared, req: LowerRequest, progress=lambda msg: None) -> dict:
        return lower(prepared.model, max_seq_len=req.max_seq_len, prefill_chunk=req.prefill_chunk,
                     metadata=req.metadata, recipe=req.recipe, out=req.out, progress=progress,
                     kv_dtype=KV_CACHE_DTYPES[req.options.get("kv_cache", "fp32")])  # fmt: skip

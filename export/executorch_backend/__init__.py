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

from ..backend import FunctionBackend
from .lower import decompose_gelu, lower
from .prepare import MatmulRMSNorm, check_supported, prepare
from .wrappers import MODEL_FILE, ExecuTorchCausal, ExecuTorchEncoder

__all__ = [
    "ExecuTorchBackend", "ExecuTorchCausal", "ExecuTorchEncoder", "MatmulRMSNorm", "check_supported", "prepare",
    "lower", "runtime_version", "decompose_gelu", "MODEL_FILE",
]  # fmt: skip


def runtime_version() -> str:
    return version("executorch")


class ExecuTorchBackend(FunctionBackend):
    name, model_file = "executorch", MODEL_FILE
    steps = SimpleNamespace(
        runtime_version=runtime_version, check_supported=check_supported, prepare=prepare, lower=lower
    )

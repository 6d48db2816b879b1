"""torch.export -> to_edge_transform_and_lower (XNNPACK) -> to_executorch of a prepared model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.export import Dim, export

from gemma_edge.quant import Recipe

from . import ops  # noqa: F401  (.out variants the emitter substitutes in fused mode)
from .planning import memory_planning_pass
from .wrappers import MODEL_FILE, ExecuTorchCausal, ExecuTorchEncoder


def _gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU in ops XNNPACK computes as written. Its partitioner takes ``aten.gelu`` whatever the
    ``approximate`` argument and runs the erf form, so Gemma's tanh GELU (gelu_pytorch_tanh) was
    off by up to 4.7e-4 per element (executorch 1.5.1); on the real 270M the fp32 .pte's logits
    moved by 0.08 (KL 1.5e-6 on Hamlet) where ONNX Runtime and LiteRT stay within 4e-4."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1.0 + torch.erf(x * 0.7071067811865476))


def decompose_gelu(ep):
    """``ep`` with every ``aten.gelu`` spelled out (``_gelu``), before XNNPACK partitioning."""
    return ep.run_decompositions({torch.ops.aten.gelu.default: _gelu})


def _partitioners():
    """One XNNPACK partitioner for every precision. With XnnpackDynamicallyQuantizedPartitioner run
    first (ExecuTorch's LLM examples do), each 8da4w linear became a delegate call of its own and
    the fp32 ops between them others: 20 calls a layer on Gemma 3. Together they share partitions
    (the same numerics: identical logits on the tiny Gemma 3 preset)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


def lower(model: nn.Module, *, max_seq_len: int, prefill_chunk: int, metadata: dict, recipe: Recipe,
                     out: Path, progress=lambda msg: None, kv_dtype: torch.dtype = torch.float32) -> dict:  # fmt: skip
    """Export, lower and write ``out/model.pte``; return the method signatures for the manifest.
    ``kv_dtype``: the attention caches' dtype (fp16 halves the state, int8 is q8 rows (models.ops.q8_pack);
    the fused kernels read them)."""
    import warnings

    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    cfg = model.config
    with torch.no_grad(), warnings.catch_warnings():
        # State buffers have no serialised initial value: validity is tracked by position, so a slot
        # is read only after it was written in the current sequence.
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        if cfg.causal:
            wrapper = ExecuTorchCausal(model, max_seq_len, kv_dtype).eval()
            example = (torch.zeros(1, min(2, prefill_chunk), dtype=torch.long), torch.tensor([0]))
            seq = Dim("seq", min=1, max=prefill_chunk) if prefill_chunk > 1 else None
            progress(f"torch.export (prefill chunk {prefill_chunk}, context {max_seq_len})")
            ep = export(wrapper, example, dynamic_shapes=({1: seq} if seq else None, None), strict=False)
            programs = {"forward": decompose_gelu(ep)}
            methods = {
                "forward": {
                    "inputs": [
                        {"name": "tokens", "shape": [1, f"1..{prefill_chunk}"], "dtype": "int64"},
                        {"name": "input_pos", "shape": [1], "dtype": "int64"},
                    ],
                    "outputs": [{"name": "logits", "shape": [1, cfg.vocab_size], "dtype": "float32"}],
                    "kv_cache_dtype": "q8" if kv_dtype == torch.int8 else str(kv_dtype).removeprefix("torch."),
                }
            }
        else:
            wrapper = ExecuTorchEncoder(model).eval()
            example = (torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
            seq = Dim("seq", min=1, max=max_seq_len)
            progress(f"torch.export (up to {max_seq_len} tokens)")
            ep = export(wrapper, example, dynamic_shapes=({1: seq}, {1: seq}), strict=False)
            programs = {"embed": decompose_gelu(ep)}
            methods = {
                "embed": {
                    "inputs": [
                        {"name": "tokens", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
                        {"name": "attention_mask", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
                    ],
                    "outputs": [{"name": "embedding", "shape": [1, cfg.embed_dim], "dtype": "float32"}],
                }
            }
        progress("lower to ExecuTorch (XNNPACK)")
        edge = to_edge_transform_and_lower(
            programs,
            partitioner=_partitioners(),
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=metadata,
        )
        # Quant fusion turns torchao's dequantize + embedding into ExecuTorch's quantized embedding
        # kernels; reinplacing writes cache updates into the state buffers instead of copies. The
        # memory plan is the smaller of ExecuTorch's greedy one and planning.offset_planner's.
        config = ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True, run_reinplace_pass=True,
                                         memory_planning_pass=memory_planning_pass())  # fmt: skip
        et = edge.to_executorch(config)
    (out / MODEL_FILE).write_bytes(et.buffer)
    return methods

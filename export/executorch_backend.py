"""ExecuTorch lowering: torch.export -> to_edge_transform_and_lower (XNNPACK) -> to_executorch.

Causal LMs get one method, ``forward(tokens[1, T] int64, input_pos[1] int64) -> logits[1, vocab]``
with T dynamic up to the prefill chunk, the state (KV rings, global caches, conv tails, RG-LRU
states) held in mutable buffers inside the program, and the constant methods ExecuTorch's LLM
runner reads (get_max_seq_len = prefill chunk, get_max_context_len, get_bos_id, get_eos_ids,
get_vocab_size, use_kv_cache, enable_dynamic_shape). Only the last position's logits are computed.
The encoder gets ``embed(tokens[1, T], attention_mask[1, T]) -> embedding[1, dim]``.
"""

from __future__ import annotations

import copy
import dataclasses
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim, export

from gemma_edge.export import executorch_ops  # noqa: F401  (.out variants the emitter substitutes in fused mode)
from gemma_edge.export.executorch_table import kernel_linears, share_table
from gemma_edge.models import CausalLM, Encoder, fuse_projections, untie_head, use_custom_ops
from gemma_edge.models.errors import ExportError
from gemma_edge.models.layers import RMSNorm
from gemma_edge.quant import Recipe, ptq, quantize_for_executorch

__all__ = [
    "ExecuTorchCausal", "ExecuTorchEncoder", "check_supported", "prepare", "lower", "runtime_version", "decompose_gelu",
]  # fmt: skip

MODEL_FILE = "model.pte"


def runtime_version() -> str:
    return version("executorch")


class ExecuTorchCausal(nn.Module):
    """A CausalLM with its state in (mutable, non-persistent) buffers; LLM-runner signature."""

    def __init__(self, model: CausalLM, max_seq_len: int) -> None:
        super().__init__()
        self.model = model
        self.arity = []
        for i, s in enumerate(model.init_state(1, max_seq_len)):
            self.arity.append(len(s))
            for j, t in enumerate(s):
                self.register_buffer(f"state_{i}_{j}", t, persistent=False)

    def _state(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(getattr(self, f"state_{i}_{j}") for j in range(n)) for i, n in enumerate(self.arity)]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        pos = input_pos[0] + torch.arange(tokens.shape[1], dtype=torch.int64)  # (T,)
        h, new_state = self.model.backbone(tokens, pos, self._state())
        for i, s in enumerate(new_state):
            for j, t in enumerate(s):
                getattr(self, f"state_{i}_{j}").copy_(t)
        return self.model.logits(h[:, -1, :])  # (1, vocab): the last position only


class ExecuTorchEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, attention_mask)


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


def _partitioners(recipe: Recipe):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )

    return ([XnnpackDynamicallyQuantizedPartitioner()] if recipe.dynamic_activations else []) + [XnnpackPartitioner()]


class MatmulRMSNorm(nn.Module):
    """RMSNorm with mean(x^2) as a product with a constant 1/d vector: XNNPACK runs matmuls but not
    ``mean.dim``, so the plain form splits every layer into several delegate partitions."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("inv_d", torch.full((1, norm.weight.shape[0]), 1.0 / norm.weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ms = F.linear(xf * xf, self.inv_d)  # (..., 1) = mean(x^2)
        return (xf * torch.rsqrt(ms + self.eps) * (1.0 + self.weight.float())).type_as(x)


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RMSNorm):
            setattr(module, name, MatmulRMSNorm(child))
        else:
            _swap_norms(child)


def prepare(model: nn.Module, recipe: Recipe, ops: str, copy_model: bool = True, calibration=None) -> nn.Module:
    """The model (a private copy unless ``copy_model`` is False) quantized per the recipe (4-bit
    codes chosen by ``recipe.ptq`` on XNNPACK's grid, calibrated on the ids ``calibration``), routed
    through the custom ops if fused, with XNNPACK-friendly norms."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    _swap_norms(model)
    fuse_projections(model)  # one XNNPACK linear for q/k/v and one for gate/up
    shared = ops == "fused" and model.config.causal and getattr(model, "lm_head", 1) is None
    if recipe.embedding_bits is not None and not shared:
        untie_head(model)  # stock ops: the head is an XNNPACK linear, which keeps its own copy
    table_scales = None
    if recipe.is_quantized:
        weight_only = recipe.weight_bits == 4 and not recipe.dynamic_activations  # int4: our kernel's linears
        grid = ptq.GRIDS["executorch_kernel" if weight_only else "executorch"]
        scales = ptq.optimize(model, recipe, grid, calibration) if recipe.has_int4 else {}
        table_scales = scales.pop(model.backbone.embed, None) if shared else None  # the table is ours, not torchao's
        rest = dataclasses.replace(recipe, embedding_bits=None) if shared else recipe
        if weight_only:
            kernel_linears(model, recipe.group_size, scales, grid)
            rest = dataclasses.replace(rest, weight_bits=None)  # torchao: at most the (untied) table
        quantize_for_executorch(model, rest, scales)
    if shared:  # one stored table for the lookup and gemma_edge::table_head (export/executorch_table.py)
        share_table(model, recipe.embedding_bits, recipe.group_size, table_scales)
    if ops == "fused":
        use_custom_ops(model)
    return model


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    """Refuse recipes this backend cannot realise correctly, before any work is done."""
    if recipe.weight_bits == 16:
        raise ExportError(
            f"recipe {recipe.name} on executorch: fp16 weights are a LiteRT recipe here (XNNPACK's fp16 path "
            "computes in fp16 too); use fp32, 8da8w or 8da4w"
        )
    if recipe.weight_bits is None and recipe.embedding_bits is not None:
        raise ExportError(
            f"recipe {recipe.name} on executorch: with fp32 linears the untied head of a quantized table would be a "
            "weight-only int linear, which XNNPACK mis-lowers (measured on the real Gemma 3 270M: KL 496 against "
            "eager); use int4 (--ops fused), 8da4w or 8da8w with the same +emb suffix"
        )
    if recipe.weight_bits == 4 and not recipe.dynamic_activations and ops != "fused":
        raise ExportError(
            f"recipe {recipe.name} on executorch: weight-only int4 linears run on gemma_edge's own kernel "
            "(XNNPACK has none with fp32 activations): use --ops fused, or 8da4w (int8 dynamic activations)"
        )
    if recipe.weight_bits == 8 and not recipe.dynamic_activations:
        raise ExportError(
            f"recipe {recipe.name} on executorch: weight-only int8 linears are mis-lowered by "
            "XNNPACK in executorch 1.5.1 with torchao 0.18 (its partitioner takes a dequantized weight with fp32 "
            "activations for a statically quantized linear; one linear, measured: max error ~1e3 against eager), "
            "and without XNNPACK torchao's dequantize_affine has no ExecuTorch kernel; use 8da8w (int8 weights), "
            "8da4w, or int4 with --ops fused"
        )


def lower(model: nn.Module, *, max_seq_len: int, prefill_chunk: int, metadata: dict, recipe: Recipe,
                     out: Path, progress=lambda msg: None) -> dict:  # fmt: skip
    """Export, lower and write ``out/model.pte``; return the method signatures for the manifest."""
    import warnings

    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    cfg = model.config
    with torch.no_grad(), warnings.catch_warnings():
        # State buffers have no serialised initial value: validity is tracked by position, so a slot
        # is read only after it was written in the current sequence.
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        if cfg.causal:
            wrapper = ExecuTorchCausal(model, max_seq_len).eval()
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
            partitioner=_partitioners(recipe),
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=metadata,
        )
        # Quant fusion turns torchao's dequantize + embedding into ExecuTorch's quantized embedding
        # kernels; reinplacing writes cache updates into the state buffers instead of copies.
        et = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True, run_reinplace_pass=True))
    (out / MODEL_FILE).write_bytes(et.buffer)
    return methods

"""Blockwise symmetric weight quantization in ONNX Runtime's MatMulNBits / GatherBlockQuantized layout.

A weight W (N, K) is cut into blocks of ``block_size`` along K. Each block gets one scale
s = m / -2^(bits-1), where m is the block's value of largest magnitude (sign kept), so that m maps
to the most negative code exactly; q = clamp(round(w / s), -2^(bits-1), 2^(bits-1) - 1). Codes are
stored unsigned (q + 2^(bits-1), ORT's default zero point) and, for 4 bits, two per byte, low
nibble first: ``qweight`` (N, K / block, block * bits / 8) uint8, ``scales`` (N, K / block).

MatMulNBits takes its scales in the activations' type (fp32 here), 32 bits per block: 1 bit per
weight at block 32. NBitsLinear stores them as fp16 instead (as llama.cpp's Q4_0 does) and casts
them to fp32 in the graph; ONNX Runtime folds that Cast into an fp32 constant when it loads the
model (so the file holds 4.5 bits per weight at block 32, memory 5). The scales are rounded to fp16
before the codes are chosen, so every code is exact for the scale the kernel multiplies by.

The eager kernels of ``gemma_edge::matmul_nbits`` and ``gemma_edge::gather_nbits`` dequantize and
compute in fp32: they are the eager quantized model that an ONNX artifact is checked against, and
the ONNX exporter translates them to the com.microsoft contrib ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.models.errors import InputError

__all__ = ["quantize_blockwise", "dequantize_blockwise", "NBitsLinear", "NBitsEmbedding"]


def quantize_blockwise(w: torch.Tensor, bits: int, block_size: int, scales: torch.Tensor | None = None,
                       scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(N, K) float -> (qweight uint8 (N, K/block, block*bits/8), scales fp32 (N, K/block)).

    ``scales`` (N, K/block), when given, replace the max rule (a PTQ method chose them: quant/ptq.py);
    either way they are rounded to ``scale_dtype`` (the precision they are stored in) first."""
    if bits not in (4, 8):
        raise InputError(f"bits must be 4 or 8, got {bits}")
    N, K = w.shape
    if block_size < 16 or block_size & (block_size - 1) or K % block_size:
        raise InputError(f"block_size must be a power of two >= 16 dividing K={K}, got {block_size}")
    blocks = w.detach().float().reshape(N, K // block_size, block_size)
    half = 2 ** (bits - 1)
    if scales is None:
        idx = blocks.abs().argmax(-1, keepdim=True)
        extreme = blocks.gather(-1, idx)  # signed value of largest magnitude
        scales = extreme / -half
    else:
        scales = scales.float().reshape(N, K // block_size, 1)
    scales = scales.to(scale_dtype).float()
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)  # all-zero block: any scale
    q = torch.clamp(torch.round(blocks / scales), -half, half - 1).to(torch.int16) + half  # unsigned codes
    q = q.to(torch.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q.contiguous(), scales.squeeze(-1).contiguous()


def dequantize_blockwise(qweight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse layout: (N, K/block, blob) uint8 + (N, K/block) -> (N, K) fp32."""
    N, nb, blob = qweight.shape
    if bits == 4:
        q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1).reshape(N, nb, 2 * blob)
    else:
        q = qweight
    w = (q.to(torch.float32) - 2 ** (bits - 1)) * scales.reshape(N, nb)[..., None]
    return w.reshape(N, -1)


@torch.library.custom_op("gemma_edge::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, in_features: int,
                 out_features: int, bits: int, block_size: int, accuracy_level: int) -> torch.Tensor:  # fmt: skip
    return F.linear(x.float(), dequantize_blockwise(qweight, scales, bits)).to(x.dtype)


@matmul_nbits.register_fake
def _(x, qweight, scales, in_features, out_features, bits, block_size, accuracy_level):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("gemma_edge::gather_nbits", mutates_args=())
def gather_nbits(qweight: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor, bits: int,
                 block_size: int) -> torch.Tensor:  # fmt: skip
    flat = ids.reshape(-1)
    scales = scales.reshape(qweight.shape[0], -1)
    rows = dequantize_blockwise(qweight.index_select(0, flat), scales.index_select(0, flat), bits)
    return rows.reshape(*ids.shape, -1)


@gather_nbits.register_fake
def _(qweight, scales, ids, bits, block_size):
    return scales.new_empty((*ids.shape, qweight.shape[1] * qweight.shape[2] * 8 // bits))


class NBitsLinear(nn.Module):
    """A bias-optional linear with blockwise-quantized weights (MatMulNBits on ONNX Runtime).

    ``accuracy_level`` 4 makes ORT quantize activations to int8 on the fly (the 8da4w recipe); the
    eager kernel computes in fp32 either way, so 8da4w's lowering error includes that rounding."""

    def __init__(self, linear: nn.Linear, bits: int, block_size: int, accuracy_level: int = 0,
                 scales: torch.Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.block_size, self.accuracy_level = bits, block_size, accuracy_level
        q, s = quantize_blockwise(linear.weight, bits, block_size, scales, torch.float16)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", s.reshape(-1).half())  # flat, as MatMulNBits takes them (see top)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            y = torch.ops.gemma_edge.matmul_nbits(x, self.qweight, self.scales.float(), self.in_features,
                                                  self.out_features, self.bits, self.block_size,
                                                  self.accuracy_level)  # fmt: skip
        else:  # eager: the op's own math, with the dequantized weight kept after the first call
            if getattr(self, "_weight", None) is None:
                self._weight = dequantize_blockwise(self.qweight, self.scales.float(), self.bits)
            y = F.linear(x.float(), self._weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


class NBitsEmbedding(nn.Module):
    """An embedding table read from an NBitsLinear's buffers (a tied table and head stored once)."""

    def __init__(self, source: NBitsLinear, owned: bool = False) -> None:
        super().__init__()
        if owned:  # an untied table keeps its own quantized bytes
            self.table = source
        self._source = [source]  # a plain list: a shared source's buffers belong to the head module
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features

    @property
    def weight(self) -> torch.Tensor:  # the dequantized table, for code that reads .weight
        s = self._source[0]
        return dequantize_blockwise(s.qweight, s.scales.float(), s.bits)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = self._source[0]
        return torch.ops.gemma_edge.gather_nbits(s.qweight, s.scales.float(), ids, s.bits, s.block_size)


def _replace_linears(module: nn.Module, bits: int, block_size: int, accuracy_level: int, scales: dict) -> int:
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features % block_size == 0:
            setattr(module, name, NBitsLinear(child, bits, block_size, accuracy_level, scales.get(child)))
            n += 1
        elif not isinstance(child, (nn.Linear, NBitsLinear)):
            n += _replace_linears(child, bits, block_size, accuracy_level, scales)
    return n


@torch.no_grad()
def quantize_for_onnx(model: nn.Module, recipe, scales: dict | None = None) -> dict:
    """Quantize ``model`` in place into MatMulNBits / GatherBlockQuantized form; return the layout.

    int8 and int4 use blocks of ``recipe.group_size`` (32 when the recipe says per channel); 8da4w
    and 8da8w are int4 and int8 with ``accuracy_level`` 4. With ``+emb4`` the table is quantized in
    blocks along d_model and the head reads the same bytes (a tied head is stored once).
    ``scales`` (module -> scales, from quant/ptq.py; the table under its nn.Embedding) replace the
    max rule where given.
    """
    scales = scales or {}
    block = recipe.group_size or 32
    layout = {"block_size": block, "symmetric": True}
    head = getattr(model, "lm_head", None)
    if recipe.embedding_bits is not None:
        table = model.backbone.embed
        if table.embedding_dim % block:
            raise InputError(f"recipe {recipe.name}: d_model {table.embedding_dim} is not a multiple of block {block}")
        src = head if isinstance(head, nn.Linear) else nn.Linear(table.embedding_dim, table.num_embeddings, bias=False)
        if head is None:
            src.weight = table.weight  # tied: quantize the table once, for both uses
        level = 4 if recipe.dynamic_activations else 0  # the head computes like the other linears
        model.lm_head = NBitsLinear(src, recipe.embedding_bits, block, level, scales.get(head or table))
        if head is None:
            model.backbone.embed = NBitsEmbedding(model.lm_head)
        else:
            own = _table_linear(table, recipe.embedding_bits, block, scales.get(table))
            model.backbone.embed = NBitsEmbedding(own, owned=True)
        layout["embedding"] = {
            "op": "GatherBlockQuantized",
            "bits": recipe.embedding_bits,
            "shared_with_head": head is None,
        }
    if recipe.weight_bits is not None:
        level = 4 if recipe.dynamic_activations else 0
        n = _replace_linears(model, recipe.weight_bits, block, level, scales)
        if n == 0:
            raise InputError(f"recipe {recipe.name}: no linear layer has in_features divisible by block {block}")
        layout["linear"] = {"op": "MatMulNBits", "bits": recipe.weight_bits, "accuracy_level": level, "count": n}
    return layout


def _table_linear(table: nn.Embedding, bits: int, block: int, scales=None) -> NBitsLinear:
    lin = nn.Linear(table.embedding_dim, table.num_embeddings, bias=False)
    lin.weight = table.weight
    return NBitsLinear(lin, bits, block, scales=scales)

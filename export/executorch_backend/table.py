"""The tied embedding table stored once in a .pte: one constant read by the lookup and by the head.

XNNPACK packs every linear weight it delegates into its own blob, so a tied head handed to it
stores the table a second time (the lookup cannot read XNNPACK's copy). In fused mode the head is
instead ``gemma_edge::table_head``, a kernel of ours (runtime_py/kernels) that reads the very tensors
the lookup reads:

- ``+emb4``: codes -8..7 packed two per byte as ``quantized_decomposed::embedding_4bit`` takes them
  (byte j of a row: code 2j + 8 in the high nibble, code 2j+1 + 8 in the low one), fp16 scales per
  group of ``recipe.group_size``;
- ``+emb8``: int8 codes, one fp16 scale per row (``quantized_decomposed::embedding_byte``);
- no table quantization: the fp32 table itself (``aten.embedding``).

The head computes ``x @ dequantized(table)^T`` in fp32 (codes times their fp16 scale, exact in
fp32); the eager modules here compute the same from a cached dequantized copy, so the eager
reference is the kernel's arithmetic up to summation order.

With ``8da4w`` (int8 dynamic activations) the head over a 4-bit table is instead
``gemma_edge::table_head_a8``: the activations are quantized to int8 per group of the table's group
size (symmetric, ``max|x| / 127``, round half to even: ``quantize_groups``, as llama.cpp's Q8_0
quantizes what meets a Q4_0 weight) and each group's dot product is exact in int32, so the head
reads 4-bit codes with integer multiply-adds instead of widening them to fp32. The eager module
computes the same quantized activations against the dequantized table.

With groups of 32 and a row count divisible by 8, that 4-bit table is stored in tiles of 8 rows
(``tile_rows``: per tile and group, the 8 rows' codes one after another, scales likewise), read by
``gemma_edge::tile8_head_a8`` and ``gemma_edge::tile8_lookup`` (runtime_py/kernels/tile8_head.cpp): a
decode step then streams the table as one sequential read of codes and one of scales, with one
VNNI dot covering four rows, where the row-major layout costs a reduction and two streams per row.
The values are the same codes and scales, so the arithmetic is table_head_a8's.

The same kernel is the weight-only int4 linear of the ``int4`` recipe (``KernelLinear``): XNNPACK
has no blockwise int4 linear with fp32 activations (its 8da4w quantizes each token's activations to
int8, which costs the real Gemma 3 270M ~0.015-0.020 KL over the same codes in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "dequantize", "quantize_groups", "pack_table", "tile_rows", "untile_rows", "TableLookup", "TableHead",
    "share_table", "KernelLinear", "kernel_linears",
]  # fmt: skip


def dequantize(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, K) fp32 values of a stored table: ``code * float(scale)`` per group, or the fp32 table."""
    if bits == 32:
        return weight
    if bits == 4:
        codes = torch.stack(((weight >> 4).to(torch.int16), (weight & 15).to(torch.int16)), -1).flatten(1) - 8
    else:
        codes = weight.to(torch.int16)
    gs = codes.shape[1] // scales.shape[1]
    return (codes.float().view(codes.shape[0], -1, gs) * scales.float()[..., None]).flatten(1)


def quantize_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` (..., K) fp32 on the int8 grid the a8 head uses: per group of ``group_size``,
    ``s = max|x| / 127`` and ``round(x / s) * s`` (an all-zero group stays zero)."""
    g = x.float().unflatten(-1, (-1, group_size))
    s = g.abs().amax(-1, keepdim=True) / 127
    q = torch.where(s == 0, torch.zeros_like(g), torch.round(g / torch.where(s == 0, torch.ones_like(s), s)))
    return (q.clamp(-127, 127) * s).flatten(-2)


@torch.library.custom_op("gemma_edge::table_head_a8", mutates_args=())
def table_head_a8(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return F.linear(quantize_groups(x, x.shape[-1] // scales.shape[1]), dequantize(weight, scales, 4))


@table_head_a8.register_fake
def _(x, weight, scales):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


TILE = 8  # rows per tile of the tiled 4-bit table


def tile_rows(weight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed 4-bit table (N, K/2) uint8 with (N, G) scales in tiles of 8 rows: (N/8, G, 8 * gs/2)
    codes and (N/8, G, 8) scales, per tile and group the 8 rows one after another."""
    N, G = scales.shape
    if N % TILE:
        raise ValueError(f"a tiled table needs a multiple of {TILE} rows, not {N}")
    w = weight.reshape(N // TILE, TILE, G, -1).transpose(1, 2).reshape(N // TILE, G, -1)
    return w.contiguous(), scales.reshape(N // TILE, TILE, G).transpose(1, 2).contiguous()


def untile_rows(weight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tile_rows``'s inverse: the row-major (N, K/2) codes and (N, G) scales."""
    T, G, _ = scales.shape
    w = weight.reshape(T, G, TILE, -1).transpose(1, 2).reshape(T * TILE, -1)
    return w, scales.transpose(1, 2).reshape(T * TILE, G)


@torch.library.custom_op("gemma_edge::tile8_head_a8", mutates_args=())
def tile8_head_a8(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return table_head_a8(x, *untile_rows(weight, scales))


@tile8_head_a8.register_fake
def _(x, weight, scales):
    return x.new_empty((*x.shape[:-1], weight.shape[0] * TILE))


@torch.library.custom_op("gemma_edge::tile8_lookup", mutates_args=())
def tile8_lookup(weight: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, dequantize(*untile_rows(weight, scales), 4))


@tile8_lookup.register_fake
def _(weight, scales, ids):
    return torch.empty((*ids.shape, weight.shape[1] * weight.shape[2] // TILE * 2), dtype=torch.float32,
                       device=ids.device)


@torch.library.custom_op("gemma_edge::table_head", mutates_args=())
def table_head(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    return F.linear(x, dequantize(weight, scales, bits))


@table_head.register_fake
def _(x, weight, scales, bits):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_lib = torch.library.Library("gemma_edge", "FRAGMENT")


def _out_variant(op):
    """The ``.out`` overload's implementation: ``op``'s result resized and copied into ``out``."""

    def run(*args, out):
        res = op(*args)
        out.resize_(res.shape).copy_(res)
        return out

    return run


for _name, _args in (
    ("table_head", "Tensor x, Tensor weight, Tensor scales, SymInt bits"),
    ("table_head_a8", "Tensor x, Tensor weight, Tensor scales"),
    ("tile8_head_a8", "Tensor x, Tensor weight, Tensor scales"),
    ("tile8_lookup", "Tensor weight, Tensor scales, Tensor ids"),
):
    _lib.define(f"{_name}.out({_args}, *, Tensor(a!) out) -> Tensor(a!)")
    for _key in ("CompositeExplicitAutograd", "Meta"):
        _lib.impl(f"{_name}.out", _out_variant(getattr(torch.ops.gemma_edge, _name)), _key)


def pack_table(w: torch.Tensor, bits: int, group_size: int, scales: torch.Tensor | None = None):
    """(weight, fp16 scales) of the stored table for fp32 values ``w`` (N, K). ``scales`` (N, K/group)
    are the 4-bit scales chosen by quant/ptq.py (``w`` then lies on their grid); without them, its
    round-to-nearest on XNNPACK's grid (4-bit) or absmax / 127 per row (8-bit)."""
    w = w.detach().float()
    N, K = w.shape
    if bits == 4:
        if scales is None:
            from gemma_edge.quant import ptq

            w, scales = ptq.quantize_weight(w, group_size, ptq.GRIDS["executorch"], "rtn")
        g = w.view(N, K // group_size, group_size)
        s = scales
    else:
        g = w.view(N, 1, K)
        s = g.abs().amax(-1) / 127
    s16 = s.to(torch.float16)
    s16 = torch.where(s16 == 0, torch.ones_like(s16), s16)  # an all-zero group: codes 0 with any scale
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    codes = torch.round(g / s16.float()[..., None]).clamp(lo, hi).to(torch.int16).view(N, K)
    if bits == 8:
        return codes.to(torch.int8), s16
    u = (codes + 8).to(torch.uint8)
    return (u[:, 0::2] << 4) | u[:, 1::2], s16


class _Table(nn.Module):
    """The stored table: ``weight`` and ``scales`` buffers (or the fp32 table's parameter)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor | None, bits: int, tiled: bool = False) -> None:
        super().__init__()
        self.bits, self.tiled = bits, tiled
        if tiled:  # a 4-bit table in tiles of 8 rows (tile_rows)
            weight, scales = tile_rows(weight, scales)
        if bits == 32:
            self.weight = weight  # the embedding's own parameter
            self.register_buffer("scales", torch.zeros(0, dtype=torch.float16))
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("scales", scales)
        self._values = None

    def values(self) -> torch.Tensor:
        if self._values is None:
            w, s = untile_rows(self.weight, self.scales) if self.tiled else (self.weight, self.scales)
            self._values = dequantize(w, s, self.bits)
        return self._values


class TableLookup(nn.Module):
    """The embedding lookup reading the stored table (ExecuTorch's quantized embedding kernels)."""

    def __init__(self, table: _Table) -> None:
        super().__init__()
        self.table = table

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.table
        if not torch.compiler.is_exporting():
            return F.embedding(tokens, t.values())
        if t.tiled:
            return torch.ops.gemma_edge.tile8_lookup(t.weight, t.scales, tokens)
        if t.bits == 4:
            return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                t.weight, t.scales, None, -8, 7, tokens, dtype=torch.float32
            )
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            t.weight, t.scales, None, -128, 127, tokens, dtype=torch.float32
        )


class TableHead(nn.Module):
    """The output head over the same stored table (``gemma_edge::table_head``, or with
    ``int8_activations`` over a 4-bit table ``gemma_edge::table_head_a8``)."""

    def __init__(self, table: _Table, int8_activations: bool = False) -> None:
        super().__init__()
        if int8_activations and table.bits != 4:
            raise ValueError(f"int8 activations need the 4-bit table, not {table.bits}-bit")
        self.table = table
        self.int8_activations = int8_activations

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = self.table
        if self.int8_activations:
            if not torch.compiler.is_exporting():
                return F.linear(quantize_groups(h, h.shape[-1] // t.scales.shape[-2 if t.tiled else 1]), t.values())
            if t.tiled:
                return torch.ops.gemma_edge.tile8_head_a8(h, t.weight, t.scales)
            return torch.ops.gemma_edge.table_head_a8(h, t.weight, t.scales)
        if not torch.compiler.is_exporting():
            return F.linear(h, t.values())
        return torch.ops.gemma_edge.table_head(h, t.weight, t.scales, t.bits)


def share_table(
    model: nn.Module, bits: int | None, group_size: int, scales: torch.Tensor | None = None,
    int8_activations: bool = False,
) -> None:
    """Make a tied causal LM's lookup (if ``bits``) and head read one stored table, in place; with
    ``int8_activations`` a 4-bit table's head meets int8 activations (table_head_a8; with groups of 32
    over a multiple of 8 rows, the table in tiles of 8 rows read by tile8_head_a8 and tile8_lookup)."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (quantized_decomposed ops)

    emb = model.backbone.embed
    if bits is None:
        table = _Table(emb.weight, None, 32)
    else:
        w, s = pack_table(emb.weight, bits, group_size, scales)
        tiled = int8_activations and bits == 4 and group_size == 32 and w.shape[0] % TILE == 0
        table = _Table(w, s, bits, tiled)
        model.backbone.embed = TableLookup(table)
    model.lm_head = TableHead(table, int8_activations and bits == 4)


class KernelLinear(TableHead):
    """A bias-free linear with int4 weights in groups (fp16 scales), computed by
    ``gemma_edge::table_head`` with fp32 activations (TableHead's forward over its own table)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, group_size: int) -> None:
        w, s = pack_table(weight, 4, group_size, scales)
        super().__init__(_Table(w, s, 4))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]


def kernel_linears(model: nn.Module, group_size: int, scales: dict, grid) -> int:
    """Replace, in place, every bias-free ``nn.Linear`` whose input size ``group_size`` divides by a
    KernelLinear with the scales ``scales[linear]`` (chosen by quant/ptq.py on ``grid``, the weight
    already snapped to them), or round-to-nearest scales on ``grid``; return how many."""
    from gemma_edge.quant import ptq

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child.bias is not None or child.in_features % group_size:
                continue
            s = scales.pop(child, None)
            w = child.weight.detach().float()
            if s is None:
                w, s = ptq.quantize_weight(w, group_size, grid, "rtn")
            setattr(parent, name, KernelLinear(w, s, group_size))
            n += 1
    return n

"""Reading the flatbuffer back: its quantized weights as the eager lowering reference, its composites
and each signature's ops."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gemma_edge.models import untie_head, use_custom_ops
from gemma_edge.quant import Recipe

from .quantize import DYNAMIC
from .wrappers import MODEL_FILE


class _DynamicQuantLinear(nn.Module):
    """A linear whose input is fake-quantized per row to asymmetric int8, as LiteRT's dynamic-range
    kernels (XNNPACK qd8) quantize activations on the fly."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(-1, keepdim=True).clamp(max=0)
        hi = x.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 255).clamp(min=1e-12)
        zp = torch.round(-128 - lo / scale)
        xq = (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale
        return self.linear(xq)


def _artifact_weights(tflite: Path) -> dict[tuple[int, ...], list[torch.Tensor]]:
    """Every quantized (int8 / int4) or fp16 2-D constant of the flatbuffer, as fp32, grouped by shape."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite))
    found: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for t in interp.get_tensor_details():
        qp = t["quantization_parameters"]
        if len(t["shape"]) != 2 or not (t["dtype"] == np.float16 or (t["dtype"] == np.int8 and len(qp["scales"]))):
            continue
        try:
            q = torch.from_numpy(interp.get_tensor(t["index"]).astype(np.float32))
        except ValueError:  # not a constant
            continue
        if t["dtype"] == np.float16:  # fp16 weights: the values themselves
            found.setdefault(tuple(q.shape), []).append(q)
            continue
        N, K = q.shape
        scales = torch.from_numpy(qp["scales"].astype(np.float32)).reshape(N, -1)
        w = q * scales.repeat_interleave(K // scales.shape[1], dim=1)
        found.setdefault((N, K), []).append(w)
    return found


def eager_quantized(model: nn.Module, recipe: Recipe, artifact_dir: Path) -> nn.Module:
    """The eager model with the artifact's own quantized weights (read back from the flatbuffer and
    dequantized; each linear and the embedding table takes the candidate of its shape nearest to its
    fp32 weight) and, for the dynamic recipes, activations fake-quantized as LiteRT does."""

    model = copy.deepcopy(model)
    use_custom_ops(model, False)  # plain PyTorch, no composites
    if model.config.causal:
        untie_head(model)  # the head reads the same quantized table, then its input is quantized
    found = _artifact_weights(artifact_dir / MODEL_FILE)
    dynamic = recipe.base in DYNAMIC
    targets = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    with torch.no_grad():
        for m in targets:
            cands = found.get(tuple(m.weight.shape), [])
            if not cands:
                continue
            best = min(cands, key=lambda w: (w - m.weight).abs().max().item())
            m.weight.copy_(best)
        if dynamic:
            _wrap_linears(model, {id(m) for m in targets if tuple(m.weight.shape) in found})
    return model


def _wrap_linears(module: nn.Module, quantized: set[int]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and id(child) in quantized:
            setattr(module, name, _DynamicQuantLinear(child))
        else:
            _wrap_linears(child, quantized)


def composite_names(tflite: Path) -> list[str]:
    """Names of the STABLEHLO_COMPOSITE ops in a .tflite file (read from the flatbuffer)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAsModel(tflite.read_bytes(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    names = []
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            code = codes[op.OpcodeIndex()]
            if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != fb.BuiltinOperator.STABLEHLO_COMPOSITE:
                continue
            opts = fb.StableHLOCompositeOptions()
            table = op.BuiltinOptions2()
            opts.Init(table.Bytes, table.Pos)
            names.append(opts.Name().decode())
    return names


def signature_ops(tflite: Path) -> dict[str, Counter]:
    """Each signature's builtin ops by name, counted (read from the flatbuffer)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAsModel(tflite.read_bytes(), 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    out = {}
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        sub = model.Subgraphs(sig.SubgraphIndex())
        ops = (codes[sub.Operators(i).OpcodeIndex()] for i in range(sub.OperatorsLength()))
        out[sig.SignatureKey().decode()] = Counter(names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in ops)
    return out

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

import copy
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gemma_edge.models import CausalLM, Encoder, ops
from gemma_edge.models.attention import Attention
from gemma_edge.models.errors import ExportError
from gemma_edge.models.recurrent import RGLRU
from gemma_edge.quant import Recipe, ptq

__all__ = ["check_supported", "prepare", "lower", "runtime_version", "state_names"]

MODEL_FILE = "model.tflite"


def runtime_version() -> str:
    return version("ai-edge-litert")


def state_names(cfg) -> list[str]:
    names = []
    for i, kind in enumerate(cfg.layer_kinds):
        names += (
            [f"conv_state_{i}", f"rglru_state_{i}"] if kind == "recurrent" else [f"kv_cache_k_{i}", f"kv_cache_v_{i}"]
        )
    return names


class LiteRTCausal(nn.Module):
    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model
        self.names = state_names(model.config)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **state: torch.Tensor) -> dict:
        flat = [state[n] for n in self.names]
        pairs = [tuple(flat[i : i + 2]) for i in range(0, len(flat), 2)]
        h, new = self.model.backbone(tokens, input_pos, pairs)  # int32 positions throughout
        out = {"logits": self.model.logits(h[:, -1:, :])}
        out.update(zip(self.names, [t for s in new for t in s]))
        return out


class LiteRTEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        return {"embedding": self.model(tokens, attention_mask)}


def _composite_attention(q, k, v, q_pos, k_pos, window, scale, softcap, causal):
    from litert_torch.hlfb import StableHLOCompositeBuilder

    b = StableHLOCompositeBuilder(
        name="gemma_edge.sliding_window_attention",
        attr={"window": int(window), "scale": float(scale), "softcap": float(softcap), "causal": bool(causal)},
    )
    q, k, v, q_pos, k_pos = b.mark_inputs(q, k, v, q_pos, k_pos)
    out = ops.attention_reference(q, k, v, q_pos, k_pos, window, scale, softcap, causal)
    return b.mark_outputs(out)


def _composite_rg_lru(x, gxw, gxb, gaw, gab, a_param, pos, h0, c):
    from litert_torch.hlfb import StableHLOCompositeBuilder

    b = StableHLOCompositeBuilder(name="gemma_edge.rg_lru", attr={"c": float(c)})
    x, gxw, gxb, gaw, gab, a_param, pos, h0 = b.mark_inputs(x, gxw, gxb, gaw, gab, a_param, pos, h0)
    y, h = ops.rg_lru_closed_form(x, gxw, gxb, gaw, gab, a_param, pos, h0, c)
    y, h = b.mark_outputs(y, h)
    return y, h


QUANT = {  # recipe base -> what ai-edge-quantizer makes of it
    "fp16": "weight-only fp16 (float casting)",
    "int8": "weight-only int8, per channel",
    "8da8w": "dynamic int8, per channel (linears and the embedding table)",
    "int4": "dynamic int4, blockwise",
    "8da4w": "dynamic int4, blockwise",
}
DYNAMIC = ("8da8w", "int4", "8da4w")  # activations quantized to int8 on the fly by the kernels


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    if recipe.embedding_bits is not None:
        raise ExportError(
            f"recipe {recipe.name} on litert: ai-edge-quantizer quantizes the embedding lookup with the "
            "other weights; use the recipe without +emb"
        )
    if recipe.weight_bits == 4 and recipe.group_size not in (32, 128):
        raise ExportError(
            f"recipe {recipe.name} on litert: int4 blocks are 32 or 128, got group size {recipe.group_size}"
        )


def prepare(model: nn.Module, recipe: Recipe, ops_mode: str, copy_model: bool = True, calibration=None) -> nn.Module:
    """A private copy (unless ``copy_model`` is False), with our ops as named composites if fused.
    Quantization happens on the flatbuffer after conversion (``lower``); for 4-bit recipes the
    weights (the table included, which ai-edge-quantizer also quantizes) are first snapped to codes
    chosen by ``recipe.ptq`` on LiteRT's blockwise grid (-8..7, bf16 scales), which ai-edge-quantizer
    then reads back exactly (_int4_recipe)."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    if recipe.weight_bits == 4:
        ptq.optimize(model, recipe, ptq.GRIDS["litert"], calibration, table=True)
    for m in model.modules():
        if isinstance(m, Attention):
            m.op_impl = _composite_attention if ops_mode == "fused" else None
        if isinstance(m, RGLRU):
            m.op_impl = _composite_rg_lru if ops_mode == "fused" else None
    return model


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
    from gemma_edge.models import untie_head

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (Attention, RGLRU)):
            m.op_impl = None
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


def _quantize(path: Path, recipe: Recipe) -> dict:
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer import recipe as aeq

    base = recipe.base
    if base == "fp16":
        from ai_edge_quantizer import qtyping, recipe_manager

        mgr = recipe_manager.RecipeManager()
        weights = qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT)
        op = qtyping.OpQuantizationConfig(
            weight_tensor_config=weights, compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True
        )
        mgr.add_quantization_config(".*", aeq.TFLOperationName.ALL_SUPPORTED, op, aeq.AlgorithmName.FLOAT_CASTING)
        rp = mgr.get_quantization_recipe()
    elif base == "int8":
        rp = aeq.weight_only_wi8_afp32()
    elif base == "8da8w":
        # Linears and the table only: with every supported op, ai-edge-quantizer also quantizes the
        # constant left operand of Griffin's block-diagonal BATCH_MATMUL, which TFLite cannot run.
        from ai_edge_quantizer import recipe_manager

        mgr = recipe_manager.RecipeManager()
        for op in (aeq.TFLOperationName.FULLY_CONNECTED, aeq.TFLOperationName.EMBEDDING_LOOKUP):
            mgr.add_dynamic_config(regex=".*", operation_name=op, num_bits=8)
        rp = mgr.get_quantization_recipe()
    elif base in ("int4", "8da4w"):
        rp = _int4_recipe(recipe)
    else:
        raise ExportError(f"recipe {recipe.name} has no LiteRT realisation")
    q = quantizer.Quantizer(str(path))
    q.load_quantization_recipe(rp)
    result = q.quantize()
    path.write_bytes(bytes(result.quantized_model))
    return {"tool": "ai-edge-quantizer", "scheme": QUANT[base], "block_size": recipe.group_size or None}


def _int4_recipe(recipe: Recipe):
    """Blockwise int4 for every op ai-edge-quantizer supports; with a PTQ method, the linears and the
    table keep the codes and scales prepare() snapped them to (read back by its
    dequantized_weight_recovery, which needs a unit step in every block: ptq.GRIDS["litert"])."""
    from ai_edge_quantizer import algorithm_manager, recipe_manager
    from ai_edge_quantizer import recipe as aeq

    gran = {32: aeq.QuantGranularity.BLOCKWISE_32, 128: aeq.QuantGranularity.BLOCKWISE_128}[recipe.group_size]
    mgr = recipe_manager.RecipeManager()
    mgr.add_dynamic_config(".*", aeq.TFLOperationName.ALL_SUPPORTED, 4, gran)
    if recipe.ptq != "rtn":
        for op in (aeq.TFLOperationName.FULLY_CONNECTED, aeq.TFLOperationName.EMBEDDING_LOOKUP):
            algo = algorithm_manager.AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY
            mgr.add_dynamic_config(".*", op, 4, gran, algorithm_key=algo)
    return mgr.get_quantization_recipe()


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


def _spec(tensors: dict) -> list[dict]:
    return [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
    ]


def lower(model: nn.Module, *, max_seq_len: int, prefill_chunk: int, metadata: dict, recipe: Recipe,
          out: Path, progress=lambda msg: None) -> dict:  # fmt: skip
    """Convert to ``out/model.tflite``; return the signatures for the manifest."""
    import litert_torch

    cfg = model.config
    path = out / MODEL_FILE
    i32 = torch.int32
    with torch.no_grad():
        if cfg.causal:
            wrapper = LiteRTCausal(model).eval()
            state = dict(zip(wrapper.names, [t for s in model.init_state(1, max_seq_len) for t in s]))
            specs = {}
            for name, T in ((f"prefill_{prefill_chunk}", prefill_chunk), ("decode", 1)):
                specs[name] = {"tokens": torch.zeros(1, T, dtype=i32), "input_pos": torch.arange(T, dtype=i32), **state}
            if prefill_chunk == 1:
                specs.pop(f"prefill_{prefill_chunk}")
        else:
            wrapper = LiteRTEncoder(model).eval()
            x = torch.zeros(1, max_seq_len, dtype=i32)
            specs = {"embed": {"tokens": x, "attention_mask": torch.ones_like(x)}}
        progress(f"litert_torch.convert ({', '.join(specs)})")
        conv = None
        for name, kwargs in specs.items():
            conv = (conv or litert_torch).signature(name, wrapper, sample_kwargs=kwargs)
        # Lightweight conversion keeps weights as resources instead of MLIR constants: gemma3-1b
        # converts at 7.6 GiB peak instead of 13.2 GiB, with the same decode speed. Its runtime
        # constant folding writes files the interpreter rejects (two signatures), so it stays off.
        conv.convert(lightweight_conversion=True, runtime_constant_folding=False).export(str(path))
    methods = {}
    for name, kwargs in specs.items():
        outs = wrapper(**kwargs)
        methods[name] = {"inputs": _spec(kwargs), "outputs": _spec(outs)}
    if recipe.is_quantized:
        progress(f"ai-edge-quantizer: {QUANT[recipe.base]}")
        layout = _quantize(path, recipe)
        for m in methods.values():
            m["quantization"] = layout
    return methods

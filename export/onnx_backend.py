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

import copy
import json
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from gemma_edge.models import CausalLM, Encoder, fuse_projections, use_stateful_ops
from gemma_edge.models.errors import ExportError
from gemma_edge.models.layers import RMSNorm
from gemma_edge.quant import Recipe, ptq
from gemma_edge.quant.nbits import quantize_for_onnx

__all__ = ["OnnxCausal", "OnnxEncoder", "check_supported", "prepare", "lower", "runtime_version", "state_names"]

MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
# onnxruntime-genai allocates a windowed layer's cache as window + cache_slack slots (slack >= 1;
# 0 means its default of 16). Local rings get that many spare slots, so genai's buffers fit them
# exactly; GroupQueryAttention's windowed cache compacts once every slack + 1 steps (at slack 1,
# every other step: about 3% slower decode at context 4K on gemma3-1b).
GENAI_RING_SLACK = 16
OPSET = 23  # RMSNormalization
DATA_FILE = "model.onnx.data"


def runtime_version() -> str:
    return version("onnxruntime")


def state_names(cfg) -> list[tuple[str, str]]:
    """(input name, output name) of every state tensor, in the graph's order."""
    names = []
    for i, kind in enumerate(cfg.layer_kinds):
        if kind == "recurrent":
            names += [(f"past_conv.{i}", f"present_conv.{i}"), (f"past_rglru.{i}", f"present_rglru.{i}")]
        else:
            names += [(f"past_key_values.{i}.{t}", f"present.{i}.{t}") for t in ("key", "value")]
    return names


class OnnxCausal(nn.Module):
    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model
        self.arity = [2 for _ in model.config.layer_kinds]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: list[torch.Tensor]):
        T = input_ids.shape[1]
        start = attention_mask.shape[1] - T
        pos = torch.arange(T, dtype=torch.int64) + start
        state = [tuple(past[2 * i : 2 * i + 2]) for i in range(len(self.arity))]
        h, new_state = self.model.backbone(input_ids, pos, state)
        logits = self.model.logits(h[:, -1:, :])  # (1, 1, vocab)
        return (logits, *[t for s in new_state for t in s])


class OnnxEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


class FusedRMSNorm(nn.Module):
    """RMSNorm as ``F.rms_norm`` with the scale (1 + w) precomputed: one ONNX RMSNormalization node
    (opset 23) instead of six elementwise ones. Same math: x * rsqrt(mean(x^2) + eps) * (1 + w)."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.register_buffer("scale", 1.0 + norm.weight.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.scale.shape, self.scale, self.eps).type_as(x)


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RMSNorm):
            setattr(module, name, FusedRMSNorm(child))
        else:
            _swap_norms(child)


def gqa_fits(cfg) -> bool:
    """ONNX Runtime's GroupQueryAttention (with its rotary) takes head sizes that are multiples of
    16, causal attention only; elsewhere --ops fused keeps the portable attention."""
    return cfg.causal and cfg.head_dim % 16 == 0


def check_supported(recipe: Recipe, ops: str = "portable") -> None:
    if recipe.weight_bits == 16:
        raise ExportError(
            f"recipe {recipe.name} on onnx: fp16 weights are a LiteRT recipe here (MatMulNBits stores 4 or 8 "
            "bits); use fp32, int8, 8da8w, int4 or 8da4w"
        )
    if recipe.embedding_bits == 8:
        raise ExportError(
            f"recipe {recipe.name} on onnx: GatherBlockQuantized (ONNX Runtime's quantized embedding) takes "
            "4-bit tables only; use +emb4"
        )


def prepare(model: nn.Module, recipe: Recipe, ops: str, copy_model: bool = True, calibration=None) -> nn.Module:
    """The model (a private copy unless ``copy_model`` is False) quantized per the recipe in
    MatMulNBits form (4-bit codes chosen by ``recipe.ptq`` on its grid, calibrated on the ids
    ``calibration``); the eager result is the lowering reference."""
    model = (copy.deepcopy(model) if copy_model else model).eval().requires_grad_(False)
    _swap_norms(model)
    fuse_projections(model)  # one MatMul(NBits) for q/k/v and one for gate/up
    if recipe.is_quantized:
        scales = ptq.optimize(model, recipe, ptq.GRIDS["onnx"], calibration) if recipe.has_int4 else {}
        model.onnx_quant_layout = quantize_for_onnx(model, recipe, scales)
    if ops == "fused" and model.config.causal:  # lower() trims the RoPE tables to max_seq_len
        use_stateful_ops(model, model.config.max_seq_len, attention=gqa_fits(model.config))
    return model


def _register_contrib_schemas() -> None:
    """Declare the two com.microsoft contrib ops we emit to onnx's schema registry (onnx itself knows
    only the standard domain; the exporter needs a schema to build a node)."""
    from onnx import defs

    P, Opt = defs.OpSchema.FormalParameter, defs.OpSchema.FormalParameterOption.Optional
    A, INT = defs.OpSchema.Attribute, defs.OpSchema.AttrType.INT
    specs = {
        "MatMulNBits": (
            [P("A", "T1"), P("B", "T2"), P("scales", "T1"), P("zero_points", "T3", param_option=Opt),
             P("g_idx", "T4", param_option=Opt), P("bias", "T1", param_option=Opt)],
            ["K", "N", "bits", "block_size", "accuracy_level"],
            [("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
             ("T3", ["tensor(uint8)", "tensor(float)"], ""), ("T4", ["tensor(int32)"], "")],
        ),
        "GatherBlockQuantized": (
            [P("data", "T1"), P("indices", "Tind"), P("scales", "T2"), P("zero_points", "T1", param_option=Opt)],
            ["gather_axis", "quantize_axis", "block_size", "bits"],
            [("T1", ["tensor(uint8)"], ""), ("Tind", ["tensor(int64)", "tensor(int32)"], ""),
             ("T2", ["tensor(float)"], "")],
        ),
    }  # fmt: skip
    outputs = {"MatMulNBits": [P("Y", "T1")], "GatherBlockQuantized": [P("Y", "T2")]}
    # GroupQueryAttention: the inputs and attributes we use (the op has more, all optional).
    specs["GroupQueryAttention"] = (
        [P("query", "T"), P("key", "T"), P("value", "T"), P("past_key", "T"), P("past_value", "T"),
         P("seqlens_k", "M"), P("total_sequence_length", "M"), P("cos_cache", "T"), P("sin_cache", "T")],
        ["num_heads", "kv_num_heads", "local_window_size", "sliding_window_cache", "do_rotary", "rotary_interleaved"],
        [("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
    )  # fmt: skip
    outputs["GroupQueryAttention"] = [P("output", "T"), P("present_key", "T"), P("present_value", "T")]
    specs["CausalConvWithState"] = (
        [P("input", "T"), P("weight", "T"), P("bias", "T"), P("past_state", "T")],
        ["channels_last"],
        [("T", ["tensor(float)"], "")],
    )
    outputs["CausalConvWithState"] = [P("output", "T"), P("present_state", "T")]
    floats = {"GroupQueryAttention": ["scale", "softcap"]}
    for name, (inputs, attrs, types) in specs.items():
        if defs.has(name, "com.microsoft"):
            continue
        attributes = [A(n, INT, "") for n in attrs] + [
            A(n, defs.OpSchema.AttrType.FLOAT, "") for n in floats.get(name, [])
        ]
        defs.register_schema(defs.OpSchema(
            name, "com.microsoft", 1, inputs=inputs, outputs=outputs[name], type_constraints=types,
            attributes=attributes,
        ))  # fmt: skip


def _translations() -> dict:
    """Translations of our ops into ONNX Runtime's contrib ops (traced onnxscript): MatMulNBits,
    GatherBlockQuantized, GroupQueryAttention, CausalConvWithState."""
    import onnx
    from onnxscript import opset23 as op
    from onnxscript.values import Opset

    _register_contrib_schemas()
    msft = Opset("com.microsoft", 1)

    def matmul_nbits(x, qweight, scales, in_features: int, out_features: int, bits: int, block_size: int,
                     accuracy_level: int):  # fmt: skip
        return msft.MatMulNBits(x, qweight, scales, K=in_features, N=out_features, bits=bits,
                                block_size=block_size, accuracy_level=accuracy_level)  # fmt: skip

    def gather_nbits(qweight, scales, ids, bits: int, block_size: int):
        rows = op.Reshape(qweight, op.Constant(value_ints=[0, -1]))  # (N, K * bits / 8): one row per token
        scales = op.Reshape(scales, op.Constant(value_ints=[qweight.shape[0], -1]))  # (N, K / block)
        return msft.GatherBlockQuantized(rows, ids, scales, bits=bits, block_size=block_size, gather_axis=0,
                                         quantize_axis=1)  # fmt: skip

    def cached_attention(q, k, v, past_k, past_v, pos, cos_table, sin_table, num_heads: int, window: int,
                         scale: float, softcap: float):  # fmt: skip
        last = op.Gather(pos, op.Constant(value_ints=[-1]))  # (1,): the chunk's last position = total - 1
        seqlens_k = op.Cast(last, to=onnx.TensorProto.INT32)
        total = op.Cast(op.Squeeze(op.Add(last, op.Constant(value_ints=[1]))), to=onnx.TensorProto.INT32)
        return msft.GroupQueryAttention(
            q, k, v, past_k, past_v, seqlens_k, total, cos_table, sin_table, num_heads=num_heads,
            kv_num_heads=past_k.shape[1], scale=scale, softcap=softcap, local_window_size=window or -1,
            sliding_window_cache=int(window > 0), do_rotary=1, rotary_interleaved=0,
        )  # fmt: skip

    def causal_conv(x, weight, bias, past):
        return msft.CausalConvWithState(x, weight, bias, past, channels_last=1)

    return {
        torch.ops.gemma_edge.causal_conv.default: causal_conv,
        torch.ops.gemma_edge.matmul_nbits.default: matmul_nbits,
        torch.ops.gemma_edge.gather_nbits.default: gather_nbits,
        torch.ops.gemma_edge.cached_attention.default: cached_attention,
    }


def store_scales_fp16(model) -> int:
    """Store the fp32 scales of MatMulNBits / GatherBlockQuantized (which take them in the activations'
    type) as fp16 initializers behind a Cast: half their bytes in the file, and ONNX Runtime folds the
    Cast back into an fp32 constant when it loads the model. Only scales that fp16 holds exactly
    (quant/nbits.py rounds them so) are rewritten; the exporter may have folded our own Cast away."""
    import numpy as np
    import onnx_ir as ir

    g, casts = model.graph, {}
    for node in list(g):
        if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        v = node.inputs[2]
        if v is None or v.const_value is None or v.dtype != ir.DataType.FLOAT or v.name not in g.initializers:
            continue
        if v not in casts:
            arr = v.const_value.numpy()
            half = arr.astype(np.float16)
            if not np.array_equal(half.astype(np.float32), arr):
                continue
            init = ir.Value(name=f"{v.name}_fp16", const_value=ir.tensor(half, name=f"{v.name}_fp16"))
            g.register_initializer(init)
            cast = ir.node("Cast", [init], {"to": ir.DataType.FLOAT}, name=f"{v.name}_cast")
            g.insert_before(node, cast)
            casts[v] = cast.outputs[0]
        node.replace_input_with(2, casts[v])
    for v in casts:
        if not v.uses():
            g.initializers.pop(v.name)
    g.sort()
    return len(casts)


def write_ort_format(onnx_path: Path, ort_path: Path) -> None:
    """The ORT-format (flatbuffer) model ONNX Runtime Mobile loads, optimized at the extended level:
    graph fusions that hold on any CPU, none of the x86-specific layout changes of the full level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


GENAI_TYPES = {"gemma2": "gemma2", "gemma3": "gemma3_text"}


def genai_config(cfg, max_seq_len: int, metadata: dict) -> dict:
    """onnxruntime-genai's genai_config.json for a Gemma 2 / Gemma 3 artifact: shared past/present
    buffers (max_seq_len slots for global layers, window + GENAI_RING_SLACK for local ones)."""
    local = [i for i, k in enumerate(cfg.layer_kinds) if k == "local"]
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": MODEL_FILE, "head_size": cfg.head_dim, "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }  # fmt: skip
    if local:
        decoder["sliding_window"] = {
            "window_size": cfg.window, "slide_key_value_cache": False, "slide_inputs": False, "layers": local,
            "cache_slack": GENAI_RING_SLACK,
        }  # fmt: skip
    return {
        "model": {
            "bos_token_id": metadata["get_bos_id"], "eos_token_id": metadata["get_eos_ids"], "pad_token_id": 0,
            "context_length": max_seq_len, "type": GENAI_TYPES[cfg.family], "vocab_size": cfg.vocab_size,
            "decoder": decoder,
        },
        "search": {
            "max_length": max_seq_len, "past_present_share_buffer": True, "do_sample": False, "num_beams": 1,
            "num_return_sequences": 1, "min_length": 0, "top_k": 1, "top_p": 1.0, "temperature": 1.0,
            "repetition_penalty": 1.0, "length_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0,
            "early_stopping": True,
        },
    }  # fmt: skip


def lower(model: nn.Module, *, max_seq_len: int, prefill_chunk: int, metadata: dict, recipe: Recipe,
          out: Path, progress=lambda msg: None, ort_format: bool = False) -> dict:  # fmt: skip
    """Export to ``out/model.onnx`` (+ external data, and ``model.ort`` if asked); return the method
    signatures."""
    import warnings

    cfg = model.config
    path = out / MODEL_FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        if cfg.causal:
            if model.backbone.rope_table_len:  # RoPE tables as long as this artifact's positions
                model.backbone.rope_table_len = max_seq_len
            wrapper = OnnxCausal(model).eval()
            state = [t for s in model.init_state(1, max_seq_len, ring_extra=GENAI_RING_SLACK) for t in s]
            names = state_names(cfg)
            # Examples inside each dim's range and not 1 (torch.export specialises 1); a range of one
            # value (prefill_chunk 1, max_seq_len 1) is a static axis.
            T = min(2, prefill_chunk)
            total_len = min(T + 3, max_seq_len)
            example = (torch.zeros(1, T, dtype=torch.long), torch.ones(1, total_len, dtype=torch.long), state)
            seq = Dim("sequence_length", min=1, max=prefill_chunk) if prefill_chunk > 1 else None
            total = Dim("total_sequence_length", min=1, max=max_seq_len) if max_seq_len > 1 else None
            dynamic = ({1: seq} if seq else None, {1: total} if total else None, [None] * len(state))
            in_names = ["input_ids", "attention_mask", *[n for n, _ in names]]
            out_names = ["logits", *[n for _, n in names]]
            spec = lambda n, t: {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}  # noqa: E731
            signature = {
                "inputs": [
                    {"name": "input_ids", "shape": [1, f"1..{prefill_chunk}"], "dtype": "int64"},
                    {"name": "attention_mask", "shape": [1, "past + T"], "dtype": "int64"},
                    *[spec(n, t) for (n, _), t in zip(names, state)],
                ],
                "outputs": [
                    {"name": "logits", "shape": [1, 1, cfg.vocab_size], "dtype": "float32"},
                    *[spec(o, t) for (_, o), t in zip(names, state)],
                ],
            }
            methods = {"forward": signature}
        else:
            wrapper = OnnxEncoder(model).eval()
            example = (torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
            seq = Dim("sequence_length", min=1, max=max_seq_len)
            dynamic = ({1: seq}, {1: seq})
            in_names, out_names = ["input_ids", "attention_mask"], ["sentence_embedding"]
            methods = {
                "embed": {
                    "inputs": [
                        {"name": "input_ids", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
                        {"name": "attention_mask", "shape": [1, f"1..{max_seq_len}"], "dtype": "int64"},
                    ],
                    "outputs": [{"name": "sentence_embedding", "shape": [1, cfg.embed_dim], "dtype": "float32"}],
                }
            }
        progress("torch.onnx.export (dynamo)")
        program = torch.onnx.export(
            wrapper, example, dynamo=True, input_names=in_names, output_names=out_names,
            dynamic_shapes=dynamic, custom_translation_table=_translations(), optimize=True, verbose=False,
            opset_version=OPSET,
        )  # fmt: skip
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        store_scales_fp16(program.model)
        progress(f"write {MODEL_FILE} (+ external data)")
        program.save(str(path), external_data=True)
    if ort_format:
        progress(f"write {ORT_FILE} (ORT format, extended optimizations)")
        write_ort_format(path, out / ORT_FILE)
    if cfg.family in GENAI_TYPES:
        (out / "genai_config.json").write_text(json.dumps(genai_config(cfg, max_seq_len, metadata), indent=2))
    if cfg.causal:
        fused = any(getattr(m, "use_cached_op", False) for m in model.modules())
        methods["forward"]["attention"] = "GroupQueryAttention" if fused else "portable"
    layout = getattr(model, "onnx_quant_layout", None)
    if layout:
        next(iter(methods.values()))["quantization"] = layout
    return methods

"""ONNX Runtime's contrib ops: their schemas for onnx, our ops' translations into them, and the fp16
storage of their scales."""

from __future__ import annotations

import torch

from . import stateful  # noqa: F401  (registers gemma_edge::cached_attention and ::causal_conv)


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


def strip_source_metadata(model) -> int:
    """Drop what the exporter records of our Python source on every node (file paths, line numbers,
    module class names, FX node text): an artifact then depends only on the model and the settings,
    not on where gemma-edge is installed or how its code is laid out. Returns the nodes touched."""
    from onnx_ir import traversal

    n = 0
    for node in traversal.RecursiveGraphIterator(model.graph):
        if node.metadata_props:
            node.metadata_props.clear()
            n += 1
    return n


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

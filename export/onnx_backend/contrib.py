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
        # The table as MatMulNBits reads it, (N, K / block, block * bits / 8), gathered in place with
        # the blocks along its last axis: a Reshape of the initializer here would be folded into a
        # second copy of the whole table when ONNX Runtime loads the model. The scales arrive flat, as
        # the head's MatMulNBits reads them: lookup_scales (run on every export) gives the lookup the
        # (N, K / block, 1) it takes.
        rows = msft.GatherBlockQuantized(qweight, ids, scales, bits=bits, block_size=block_size, gather_axis=0,
                                         quantize_axis=2)  # (B, T, K / block, block)
        return op.Reshape(rows, op.Constant(value_ints=[0, 0, -1]))

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


def lookup_scales(model) -> int:
    """Give each GatherBlockQuantized its scales as (N, K / block, 1), reading the stored fp16 ones
    where it can; return how many lookups read them as stored.

    The lookup shares its scales with the head's MatMulNBits, which takes them flat in fp32: a Cast
    of the fp16 initializer (store_scales_fp16), folded by ONNX Runtime at load into one fp32 copy.
    Where every code times its scale is exact in fp16 (the lookup then gives the same values), the
    initializer is stored in the lookup's shape, the lookup reads it and casts its rows to fp32, and
    the head reads the Cast flattened. Otherwise the lookup reads the Cast reshaped, which ONNX
    Runtime folds into a second fp32 copy of the scales (20 MiB for Gemma 3's 262k x 640 table)."""
    import numpy as np
    import onnx_ir as ir

    g, n = model.graph, 0

    def const(name: str, values: list[int]) -> ir.Value:
        v = ir.Value(name=name, const_value=ir.tensor(np.array(values, dtype=np.int64), name=name))
        g.register_initializer(v)
        return v

    for node in list(g):
        if node.domain != "com.microsoft" or node.op_type != "GatherBlockQuantized":
            continue
        N, nb = list(node.inputs[0].shape)[:2]
        scales, cast = node.inputs[2], node.inputs[2].producer()
        s16 = cast.inputs[0] if cast is not None and cast.op_type == "Cast" else None
        if s16 is not None and _fp16_exact(s16, node.attributes["bits"].as_int()):
            s16.const_value = ir.tensor(s16.const_value.numpy().reshape(N, nb, 1), name=s16.name)
            s16.shape = ir.Shape([N, nb, 1])
            others = [u for u in scales.uses() if u.node is not node]  # the head's MatMulNBits
            if others:
                flat = ir.node("Reshape", [scales, const(f"{s16.name}_flat_shape", [-1])], name=f"{s16.name}_flat")
                g.insert_after(cast, flat)
                for use in others:
                    use.node.replace_input_with(use.idx, flat.outputs[0])
            scales.shape = ir.Shape([N, nb, 1])
            node.replace_input_with(2, s16)
            up = ir.node("Cast", [node.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{node.name}_fp32")
            g.insert_after(node, up)
            for use in list(node.outputs[0].uses()):
                if use.node is not up:
                    use.node.replace_input_with(use.idx, up.outputs[0])
            node.outputs[0].dtype = ir.DataType.FLOAT16
            if not scales.uses():
                g.remove(cast, safe=True)
            n += 1
        else:
            shaped = ir.node("Reshape", [scales, const(f"{node.name}_scales_shape", [N, nb, 1])],
                             name=f"{node.name}_scales")  # fmt: skip
            g.insert_before(node, shaped)
            node.replace_input_with(2, shaped.outputs[0])
    g.sort()
    return n


def _fp16_exact(v, bits: int) -> bool:
    """Whether ``v`` is an fp16 initializer whose every value times every code is exact in fp16."""
    import numpy as np
    import onnx_ir as ir

    if v.const_value is None or v.const_value.dtype != ir.DataType.FLOAT16 or len(v.uses()) != 1:
        return False
    codes = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.float32)
    prod = v.const_value.numpy().astype(np.float32).reshape(-1, 1) * codes
    return bool(np.array_equal(prod.astype(np.float16).astype(np.float32), prod))

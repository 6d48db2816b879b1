"""ai-edge-quantizer on the converted flatbuffer, per recipe."""

from __future__ import annotations

from pathlib import Path

from gemma_edge.models.errors import ExportError
from gemma_edge.quant import Recipe

QUANT = {  # recipe base -> what ai-edge-quantizer makes of it
    "fp16": "weight-only fp16 (float casting)",
    "int8": "weight-only int8, per channel",
    "8da8w": "dynamic int8, per channel (linears and the embedding table)",
    "int4": "dynamic int4, blockwise",
    "8da4w": "dynamic int4, blockwise",
}
DYNAMIC = ("8da8w", "int4", "8da4w")  # activations quantized to int8 on the fly by the kernels


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

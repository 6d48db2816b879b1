"""One entry for quantizing a model for a target: ``quant.apply(model, recipe, target, ...)``.

Each target registers one handler (``@quant.register("onnx")``), as torchao registers one per
config type; it quantizes the model in place into the weight form that target stores and returns
notes for the manifest. ONNX (MatMulNBits / GatherBlockQuantized) and LiteRT (codes snapped to its
grid, which ai-edge-quantizer stores after conversion) are here; ExecuTorch's handler lives with its
stored-table format (export/executorch_backend/prepare.py) and registers when that is imported.
QAT (quant/qat.py) fake-quantizes for the same targets, on the same grids.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gemma_edge.models.errors import InputError

from .recipes import Recipe

__all__ = ["apply", "register", "targets"]

_HANDLERS: dict[str, Callable[..., dict]] = {}


def register(target: str) -> Callable:
    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        _HANDLERS[target] = fn
        return fn

    return deco


def targets() -> list[str]:
    return sorted(_HANDLERS)


def apply(model: nn.Module, recipe: Recipe, target: str, *, calibration: list[int] | None = None, **options) -> dict:
    """Quantize ``model`` in place per ``recipe`` for ``target`` (4-bit codes chosen by
    ``recipe.ptq``, calibrated on the token ids ``calibration``); return the handler's notes."""
    if target not in _HANDLERS:
        raise InputError(f"no quantization handler for target {target!r}; registered: {', '.join(targets())}")
    return _HANDLERS[target](model, recipe, calibration=calibration, **options) or {}


@register("onnx")
def _onnx(model: nn.Module, recipe: Recipe, calibration=None) -> dict:
    """MatMulNBits / GatherBlockQuantized modules (quant/nbits.py); notes: the quantization layout."""
    from . import ptq
    from .nbits import quantize_for_onnx

    if not recipe.is_quantized:
        return {}
    scales = ptq.optimize(model, recipe, ptq.GRIDS["onnx"], calibration) if recipe.has_int4 else {}
    return {"quantization": quantize_for_onnx(model, recipe, scales)}


@register("litert")
def _litert(model: nn.Module, recipe: Recipe, calibration=None, smooth_alpha: float = 0.5) -> dict:
    """4-bit recipes: SmoothQuant scales into the pre-norms (with calibration; LiteRT's int4 kernels
    quantize each activation row to int8 on the fly), then every weight, the table included, snapped
    to codes on LiteRT's grid. ai-edge-quantizer stores them after conversion and reads them back
    exactly; the other recipes it quantizes itself."""
    from . import ptq
    from .smooth import smooth_pre_norms

    if recipe.weight_bits == 4:
        if calibration:
            smooth_pre_norms(model, calibration, alpha=smooth_alpha)
        ptq.optimize(model, recipe, ptq.GRIDS["litert"], calibration, table=True)
    return {}

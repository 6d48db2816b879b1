"""quant.apply: one entry, one registered handler per target."""

import pytest

from gemma_edge import models, quant
from gemma_edge.models import InputError
from gemma_edge.quant.apply import targets


def test_every_backend_quantizes_through_quant_apply():
    import importlib

    from gemma_edge.export.api import BACKENDS

    for b in BACKENDS:  # as export() does; ExecuTorch's handler lives with its stored-table format
        importlib.import_module(f"gemma_edge.export.{b}_backend")
    assert set(BACKENDS) <= set(targets())
    model = models.build("tiny-gemma3", seed=0)
    with pytest.raises(InputError, match="no quantization handler for target 'tpu'; registered: executorch, litert"):
        quant.apply(model, quant.parse_recipe("int4"), "tpu")
    notes = quant.apply(model, quant.parse_recipe("int4", 32, "rtn"), "onnx")
    assert notes["quantization"]  # the layout the manifest records

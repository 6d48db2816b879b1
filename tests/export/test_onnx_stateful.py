"""The ONNX backend's ops that own their state update (export/onnx_backend/stateful.py): schema
checks, and the model routed through them equals the plain full forward."""

import pytest
import torch

from gemma_edge import models
from gemma_edge.export.onnx_backend.stateful import use_stateful_ops, uses_cached_attention

from conftest import CAUSAL_PRESETS


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_stateful_ops_path_equals_full_forward(preset):
    """The ops that own their state update (``gemma_edge::cached_attention``, ``causal_conv``) over
    mixed chunks, with rings one slot wider than the window, reproduce the full forward."""
    model = models.build(preset, seed=0)
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    ref = model(ids)
    use_stateful_ops(model, 64)
    state, pos, outs = model.init_state(1, 64, ring_extra=1), 0, []
    for n in [3, 9, 1, 1, 13, 5, 8]:  # chunks shorter and longer than the window of 8
        logits, state = model(ids[:, pos : pos + n], torch.arange(pos, pos + n), state)
        outs.append(logits)
        pos += n
    assert (torch.cat(outs, 1) - ref).abs().max().item() <= 1e-5


def test_opcheck_cached_attention():
    q, k, v = torch.randn(1, 3, 32), torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    past = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    tables = torch.randn(16, 4).cos(), torch.randn(16, 4).sin()
    args = (q, k, v, *past, torch.arange(5, 8), *tables, 4, 8, 0.3, 2.0)
    torch.library.opcheck(torch.ops.gemma_edge.cached_attention, args)


def test_opcheck_causal_conv():
    x, past = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    torch.library.opcheck(torch.ops.gemma_edge.causal_conv, (x, torch.randn(16, 1, 4), torch.randn(16), past))


def test_use_stateful_ops_switches_back():
    model = models.build("tiny-gemma3", seed=0)
    assert uses_cached_attention(use_stateful_ops(model, 64))
    assert not uses_cached_attention(use_stateful_ops(model, 64, enabled=False))
    assert not uses_cached_attention(use_stateful_ops(model, 64, attention=False))

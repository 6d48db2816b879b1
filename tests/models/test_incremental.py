"""Prefill + decode with explicit state equals the full forward, across window boundaries."""

import pytest
import torch

from gemma_edge import models

from conftest import CAUSAL_PRESETS

TOL = 1e-4
SEQ = 48  # six windows of 8

CHUNKINGS = {
    "prefill-then-decode": [5] + [1] * 43,
    "long-prefill": [21] + [1] * 27,  # prefill longer than the window, then decode
    "mixed": [3, 11, 1, 1, 9, 2, 13, 1, 7],  # chunks above and below the window size
    "all-decode": [1] * 48,
}


def _run_chunks(model, tokens, chunks, max_seq_len=64):
    state = model.init_state(tokens.shape[0], max_seq_len)
    outs, start = [], 0
    for n in chunks:
        logits, state = model(tokens[:, start : start + n], torch.arange(start, start + n), state)
        outs.append(logits)
        start += n
    assert start == tokens.shape[1]
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_incremental_equals_full_forward(preset, chunking):
    model = models.build(preset, seed=0)
    tokens = torch.randint(0, model.config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(0))
    full = model(tokens)
    inc, _ = _run_chunks(model, tokens, CHUNKINGS[chunking])
    assert (inc - full).abs().max().item() <= TOL


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_state_shapes(preset):
    """Local layers hold `window` slots whatever max_seq_len is; global ones max_seq_len."""
    model = models.build(preset)
    cfg = model.config
    state = model.init_state(3, 128)
    for kind, s in zip(cfg.layer_kinds, state):
        if kind == "recurrent":
            assert s[0].shape == (3, cfg.conv_width - 1, cfg.lru_width)
            assert s[1].shape == (3, cfg.lru_width) and s[1].dtype == torch.float32
        else:
            slots = cfg.window if kind == "local" else 128
            assert s[0].shape == s[1].shape == (3, cfg.num_kv_heads, slots, cfg.head_dim)


@pytest.mark.parametrize("preset", CAUSAL_PRESETS)
def test_state_reused_from_position_zero_starts_clean(preset):
    model = models.build(preset, seed=1)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, model.config.vocab_size, (1, 30), generator=g)
    b = torch.randint(0, model.config.vocab_size, (1, 12), generator=g)
    _, used = _run_chunks(model, a, [10, 20])
    fresh, _ = model(b, torch.arange(12), model.init_state(1, 64))
    again, _ = model(b, torch.arange(12), used)
    assert (fresh - again).abs().max().item() == 0.0


def test_gemma3_real_shape_state_memory_is_windowed():
    """gemma3-1b at 32K: 22 local layers x 512 slots + 4 global x 32768 (REFERENCE §4b: 0.146 GB)."""
    cfg = models.get_preset("gemma3-1b")
    kv = models.state_bytes(cfg, 32_768)["kv"]
    assert round(kv / 1e9, 3) == 0.146
    g3_4b = models.state_bytes(models.get_preset("gemma3-4b"), 8192)["kv"]
    assert round(g3_4b / 1e9, 3) == 0.289


def test_recurrentgemma_state_is_constant_beyond_window():
    """REFERENCE §2a: RG-2B 16.44 MiB, RG-9B 25.02 MiB per sequence for any length >= 2048."""
    for name, mib in (("recurrentgemma-2b", 16.44), ("recurrentgemma-9b", 25.02)):
        cfg = models.get_preset(name)
        sizes = {models.state_bytes(cfg, n)["total"] for n in (2048, 8192, 1 << 20)}
        assert len(sizes) == 1
        assert round(sizes.pop() / 2**20, 2) == mib

"""The verify thresholds' noise floor: measured on the eager model, applied to the lowering limits."""

import torch

from gemma_edge import models
from gemma_edge.runtime_py.verify import FLOOR_FACTOR, FLOOR_TOP1_MARGIN, check, effective_limits, noise_floor

LIMITS = {"lowering": {"kl": 5e-3, "top1": 0.9}, "quantization": {"kl": 1.0}}


def test_floor_widens_only_the_lowering_limits():
    res = {"lowering": {"kl": 0.04, "top1": 0.895, "kl_floor": 0.025, "top1_floor": 0.94}, "quantization": {"kl": 0.6}}
    eff = effective_limits(res, LIMITS)
    assert eff["lowering"]["kl"] == FLOOR_FACTOR * 0.025 and eff["lowering"]["top1"] == 0.94 - FLOOR_TOP1_MARGIN
    assert eff["quantization"] == LIMITS["quantization"] and LIMITS["lowering"]["kl"] == 5e-3  # not mutated
    assert check(res, LIMITS) == []
    res["lowering"]["kl"] = 0.06  # past twice the floor
    assert check(res, LIMITS) == ["lowering.kl = 0.06, needs <= 0.05"]
    small = {"lowering": {"kl": 4e-3, "top1": 1.0, "kl_floor": 1e-10, "top1_floor": 1.0}}
    assert effective_limits(small, LIMITS)["lowering"] == LIMITS["lowering"]  # a quiet model keeps the table


def test_noise_floor_is_round_off_for_fp32_and_measures_a_perturbation():
    model = models.build("tiny-gemma3", seed=0).eval()
    tokens = torch.randint(0, model.config.vocab_size, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    quiet = noise_floor(model, tokens)
    assert quiet["kl_floor"] < 1e-9 and quiet["top1_floor"] == 1.0
    loud = noise_floor(model, tokens, rel=0.3)  # the hooks do perturb every layer's input
    assert loud["kl_floor"] > 1e3 * max(quiet["kl_floor"], 1e-12) and loud["top1_floor"] < 1.0

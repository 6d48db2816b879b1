"""Token sampling: greedy, or temperature with optional top-k / top-p, reproducible with a seed.

The draw is portable: SplitMix64 gives the uniform number and the token is the first whose running
sum of exp(logit - max) exceeds it times the total, all in float64 in index order. The Android
core's sampler (android_demo/core, Sampler.java) is the same algorithm, so a seed picks the same
tokens in Python and on the phone; its tests check that against files this module's Session writes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from gemma_edge.models.errors import InputError

__all__ = ["Sampler", "SplitMix64"]

_M64 = (1 << 64) - 1


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64; ``next_double`` is uniform in [0, 1) with 53 bits."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def next_double(self) -> float:
        return (self.next() >> 11) * 2.0**-53


@dataclass
class Sampler:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        num = lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool)  # noqa: E731
        if not num(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not num(self.top_p) or not 0 < self.top_p <= 1:  # NaN fails the comparison too
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        self._rng = SplitMix64(self.seed if self.seed is not None else 0)

    def __call__(self, logits: torch.Tensor) -> int:
        logits = logits.reshape(-1).float()
        if self.temperature == 0:
            return int(logits.argmax())
        x = logits.double().numpy() / float(self.temperature)
        n = x.size
        if 0 < self.top_k < n:
            kth = np.sort(x)[n - self.top_k]
            x[x < kth] = -np.inf
        if self.top_p < 1:
            order = np.argsort(-x, kind="stable")
            e = np.exp(x[order] - x[order[0]])
            p = e / np.cumsum(e)[-1]
            drop = np.cumsum(p) - p > self.top_p  # keep the smallest set reaching top_p
            x[order[drop]] = -np.inf
        c = np.cumsum(np.exp(x - x.max()))
        i = int(np.searchsorted(c, self._rng.next_double() * c[-1], side="right"))
        return min(i, n - 1)

"""Token sampling: greedy, or temperature with optional top-k / top-p, reproducible with a seed."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from gemma_edge.models.errors import InputError

__all__ = ["Sampler"]


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
        self._gen = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)

    def __call__(self, logits: torch.Tensor) -> int:
        logits = logits.reshape(-1).float()
        if self.temperature == 0:
            return int(logits.argmax())
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            sorted_logits, idx = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > self.top_p  # keep the smallest set reaching top_p
            logits = logits.scatter(0, idx[drop], float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self._gen))

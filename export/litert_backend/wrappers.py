"""The signatures' interface: the causal LM (prefill / decode, explicit state) and the encoder."""

from __future__ import annotations

import torch
from torch import nn

from gemma_edge.models import CausalLM, Encoder

MODEL_FILE = "model.tflite"


def state_names(cfg) -> list[str]:
    names = []
    for i, kind in enumerate(cfg.layer_kinds):
        names += (
            [f"conv_state_{i}", f"rglru_state_{i}"] if kind == "recurrent" else [f"kv_cache_k_{i}", f"kv_cache_v_{i}"]
        )
    return names


class LiteRTCausal(nn.Module):
    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model
        self.names = state_names(model.config)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **state: torch.Tensor) -> dict:
        flat = [state[n] for n in self.names]
        pairs = [tuple(flat[i : i + 2]) for i in range(0, len(flat), 2)]
        h, new = self.model.backbone(tokens, input_pos, pairs)  # int32 positions throughout
        out = {"logits": self.model.logits(h[:, -1:, :])}
        out.update(zip(self.names, [t for s in new for t in s]))
        return out


class LiteRTEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        return {"embedding": self.model(tokens, attention_mask)}

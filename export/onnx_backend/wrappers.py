"""The graph's interface: ONNX wrappers of the causal LM (onnxruntime-genai's names) and the encoder,
the state tensors' names, and the artifact's file names."""

from __future__ import annotations

import torch
from torch import nn

from gemma_edge.models import CausalLM, Encoder

MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
# onnxruntime-genai allocates a windowed layer's cache as window + cache_slack slots (slack >= 1;
# 0 means its default of 16). Local rings get that many spare slots, so genai's buffers fit them
# exactly; GroupQueryAttention's windowed cache compacts once every slack + 1 steps (at slack 1,
# every other step: about 3% slower decode at context 4K on gemma3-1b).
GENAI_RING_SLACK = 16
OPSET = 23  # RMSNormalization
DATA_FILE = "model.onnx.data"


def state_names(cfg) -> list[tuple[str, str]]:
    """(input name, output name) of every state tensor, in the graph's order."""
    names = []
    for i, kind in enumerate(cfg.layer_kinds):
        if kind == "recurrent":
            names += [(f"past_conv.{i}", f"present_conv.{i}"), (f"past_rglru.{i}", f"present_rglru.{i}")]
        else:
            names += [(f"past_key_values.{i}.{t}", f"present.{i}.{t}") for t in ("key", "value")]
    return names


class OnnxCausal(nn.Module):
    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model
        self.arity = [2 for _ in model.config.layer_kinds]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: list[torch.Tensor]):
        T = input_ids.shape[1]
        start = attention_mask.shape[1] - T
        pos = torch.arange(T, dtype=torch.int64) + start
        state = [tuple(past[2 * i : 2 * i + 2]) for i in range(len(self.arity))]
        h, new_state = self.model.backbone(input_ids, pos, state)
        logits = self.model.logits(h[:, -1:, :])  # (1, 1, vocab)
        return (logits, *[t for s in new_state for t in s])


class OnnxEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

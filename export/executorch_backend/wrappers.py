"""The program's interface: the causal LM with its state in mutable buffers (the LLM runner's
signature) and the encoder."""

from __future__ import annotations

import torch
from torch import nn

from gemma_edge.models import CausalLM, Encoder
from gemma_edge.models.attention import Attention
from gemma_edge.models.errors import InputError
from gemma_edge.models.ops import Q8_GROUP, q8_row_bytes

MODEL_FILE = "model.pte"


class ExecuTorchCausal(nn.Module):
    """A CausalLM with its state in (mutable, non-persistent) buffers; LLM-runner signature."""

    def __init__(self, model: CausalLM, max_seq_len: int, kv_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.arity = []
        for i, (layer, s) in enumerate(zip(model.backbone.layers, model.init_state(1, max_seq_len))):
            self.arity.append(len(s))
            kv = isinstance(layer.temporal, Attention)  # recurrent states stay fp32
            for j, t in enumerate(s):
                if kv and kv_dtype == torch.int8:  # q8 rows (models.ops.q8_pack): codes, then fp16 scales
                    if t.shape[-1] % Q8_GROUP:
                        raise InputError(f"kv_cache q8 needs a head dim that is a multiple of {Q8_GROUP} (groups of "
                                         f"{Q8_GROUP} codes share a scale); this model's is {t.shape[-1]}")  # fmt: skip
                    t = torch.zeros(*t.shape[:-1], q8_row_bytes(t.shape[-1]), dtype=torch.int8)
                self.register_buffer(f"state_{i}_{j}", t.to(kv_dtype) if kv else t, persistent=False)

    def _state(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(getattr(self, f"state_{i}_{j}") for j in range(n)) for i, n in enumerate(self.arity)]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        pos = input_pos[0] + torch.arange(tokens.shape[1], dtype=torch.int64)  # (T,)
        h, new_state = self.model.backbone(tokens, pos, self._state())
        for i, s in enumerate(new_state):
            for j, t in enumerate(s):
                getattr(self, f"state_{i}_{j}").copy_(t)
        return self.model.logits(h[:, -1, :])  # (1, vocab): the last position only


class ExecuTorchEncoder(nn.Module):
    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, attention_mask)

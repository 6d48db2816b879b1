"""One model definition for the four families: a causal LM (Gemma 2, Gemma 3, RecurrentGemma) and
an encoder (EmbeddingGemma), over one backbone of residual blocks.

Export-first: static shapes, explicit state, no tokenizer, sampler, no_grad or I/O in here.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, AttnContext
from .config import ModelConfig
from .errors import InputError
from .layers import GeGLU, RMSNorm, embed_scale
from .recurrent import RecurrentBlock

__all__ = ["Block", "Backbone", "CausalLM", "Encoder", "State"]

State = list  # one tuple of tensors per layer: (k, v) for attention, (conv_tail, h) for recurrent


class Block(nn.Module):
    """x + post(temporal(pre(x))), then + post_ffn(mlp(pre_ffn(.))); post norms in Gemma 2/3 only."""

    def __init__(self, cfg: ModelConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        d, eps = cfg.d_model, cfg.norm_eps
        self.pre_norm = RMSNorm(d, eps)
        self.temporal = RecurrentBlock(cfg) if kind == "recurrent" else Attention(cfg, kind)
        self.post_norm = RMSNorm(d, eps) if cfg.post_norms else None
        self.pre_ffn_norm = RMSNorm(d, eps)
        self.mlp = GeGLU(d, cfg.ffn_dim, cfg.mlp_bias)
        self.post_ffn_norm = RMSNorm(d, eps) if cfg.post_norms else None

    def forward(self, x, pos, state=None, ctx=None):
        if self.kind == "recurrent":
            h, state = self.temporal(self.pre_norm(x), pos, state)
        else:
            h, state = self.temporal(self.pre_norm(x), ctx, state)
        if self.post_norm is not None:
            h = self.post_norm(h)
        x = x + h
        h = self.mlp(self.pre_ffn_norm(x))
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm(h)
        return x + h, state


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, k) for k in cfg.layer_kinds)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn_kinds = sorted(set(cfg.layer_kinds) - {"recurrent"})
        for kind in self.attn_kinds:
            self.register_buffer(f"inv_freq_{kind}", Attention.inv_freq(cfg, kind), persistent=False)

    def check_inputs(self, tokens: torch.Tensor, pos: torch.Tensor, cache_len: int | None) -> None:
        """Eager-mode input checks (skipped while tracing: they need concrete values)."""
        if torch.compiler.is_compiling():
            return
        cfg = self.config
        if tokens.dim() != 2:
            raise InputError(f"tokens must be (batch, seq_len), got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int32, torch.int64):
            raise InputError(f"tokens must be int32 or int64, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            bad = int(tokens.max()) if int(tokens.max()) >= cfg.vocab_size else int(tokens.min())
            raise InputError(f"token id {bad} is out of range: vocab_size is {cfg.vocab_size}")
        if pos.shape != (tokens.shape[1],):
            raise InputError(f"input_pos must have shape ({tokens.shape[1]},), got {tuple(pos.shape)}")
        limit = min(cfg.max_seq_len, cache_len) if cache_len else cfg.max_seq_len
        if pos.numel() and int(pos.max()) >= limit:
            raise InputError(
                f"position {int(pos.max())} is beyond the sequence limit of {limit} tokens "
                f"(model max_seq_len {cfg.max_seq_len}, state max_seq_len {cache_len})"
            )
        if pos.numel() and int(pos.min()) < 0:
            raise InputError(f"input_pos must be >= 0, got {int(pos.min())}")

    def forward(self, tokens, pos, state=None, key_mask=None):
        cfg = self.config
        x = self.embed(tokens)  # (B, T, d)
        x = x * embed_scale(cfg.d_model, x.dtype, cfg.embed_scale_bf16)
        ctx = {}  # masks, RoPE tables and ring indices: once per attention kind, not per layer
        for kind in self.attn_kinds:
            first = cfg.layer_kinds.index(kind)
            cache_len = None if state is None else state[first][0].shape[2]
            window = cfg.window if kind == "local" else 0
            inv = getattr(self, f"inv_freq_{kind}")
            ctx[kind] = AttnContext.build(inv, pos, tokens.shape[0], window, cfg.causal, cache_len, key_mask)
            self.layers[first].temporal.core.extend_context(ctx[kind], inv)
        new_state = [] if state is not None else None
        for i, layer in enumerate(self.layers):
            x, s = layer(x, pos, None if state is None else state[i], ctx.get(layer.kind))
            if new_state is not None:
                new_state.append(s)
        return self.final_norm(x), new_state


def _positions(input_pos, T: int, device) -> torch.Tensor:
    if input_pos is None:
        return torch.arange(T, device=device)
    if isinstance(input_pos, int):
        return torch.arange(input_pos, input_pos + T, device=device)
    return input_pos


class CausalLM(nn.Module):
    """``model(tokens)`` -> logits (B, T, vocab); ``model(tokens, input_pos, state)`` -> (logits, state)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.causal:
            raise InputError(f"CausalLM needs a causal config; {cfg.family} is an encoder")
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def init_state(self, batch: int = 1, max_seq_len: int | None = None, dtype=torch.float32,
                   ring_extra: int = 0) -> State:  # fmt: skip
        """Zeroed state: global KV caches of max_seq_len slots, local rings of `window` (+ ring_extra)
        slots, recurrent conv tails and fp32 RG-LRU states."""
        cfg = self.config
        S = max_seq_len or cfg.max_seq_len
        if S > cfg.max_seq_len:
            raise InputError(f"max_seq_len {S} exceeds the model's max_seq_len {cfg.max_seq_len}")
        state = []
        for layer in self.backbone.layers:
            t = layer.temporal
            if isinstance(t, Attention):
                shape = (batch, cfg.num_kv_heads, t.cache_len(S, ring_extra), cfg.head_dim)
                state.append((torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)))
            else:
                state.append(t.init_state(batch, dtype))
        return state

    def state_max_seq_len(self, state: State) -> int | None:
        """The max_seq_len a state was built for (its global cache length), if it has one."""
        for layer, s in zip(self.backbone.layers, state):
            if layer.kind == "global":
                return s[0].shape[2]
        return None

    def forward(self, tokens: torch.Tensor, input_pos=None, state: State | None = None):
        pos = _positions(input_pos, tokens.shape[1], tokens.device)
        if not torch.compiler.is_compiling() and state is not None and len(state) != self.config.num_layers:
            raise InputError(f"state has {len(state)} layers, the model has {self.config.num_layers}")
        self.backbone.check_inputs(tokens, pos, self.state_max_seq_len(state) if state is not None else None)
        h, new_state = self.backbone(tokens, pos, state)
        logits = self.logits(h)
        return logits if state is None else (logits, new_state)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, d) -> soft-capped fp32 logits (B, T, vocab); tied head by default."""
        logits = (F.linear(h, self.backbone.embed.weight) if self.lm_head is None else self.lm_head(h)).float()
        if self.config.final_softcap:
            c = self.config.final_softcap
            logits = torch.tanh(logits / c) * c
        return logits


def _pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, d) -> (B, d) over real tokens (right padding)."""
    if how == "first":
        return h[:, 0]
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Encoder(nn.Module):
    """EmbeddingGemma: bidirectional backbone -> mean pooling -> dense projections -> L2 normalise."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.causal:
            raise InputError(f"Encoder needs causal=False; {cfg.family} is a causal LM")
        self.config = cfg
        self.backbone = Backbone(cfg)
        dims = (cfg.d_model, *cfg.dense_dims)
        self.dense = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in pairwise(dims))

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised embeddings (B, embed_dim)."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        self.backbone.check_inputs(tokens, pos, None)
        mask = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        h, _ = self.backbone(tokens, pos, None, key_mask=mask)  # (B, T, d)
        pooled = _pool(h, mask, self.config.pooling)
        for lin in self.dense:
            pooled = lin(pooled)
        return F.normalize(pooled, p=2, dim=-1)

    def embed(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, dim: int | None = None):
        """Embeddings truncated to a Matryoshka size ``dim`` and re-normalised (REFERENCE §3)."""
        e = self(tokens, attention_mask)
        full = self.config.embed_dim
        if dim is None or dim == full:
            return e
        if dim not in self.config.matryoshka_dims:
            raise InputError(f"dim {dim} is not one of this model's sizes {self.config.matryoshka_dims}")
        return F.normalize(e[:, :dim], p=2, dim=-1)

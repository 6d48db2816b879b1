"""Parameter counts per component and state memory per context length, without allocating weights."""

from __future__ import annotations

import torch

from .config import ModelConfig
from .model import CausalLM, Encoder

__all__ = ["param_counts", "state_bytes", "summary_rows"]


def _meta_model(cfg: ModelConfig):
    with torch.device("meta"):
        return (CausalLM if cfg.causal else Encoder)(cfg)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by component: embedding, attention, recurrent, mlp, norms, dense, head, total."""
    out = dict.fromkeys(("embedding", "attention", "recurrent", "mlp", "norms", "dense", "lm_head"), 0)
    for name, p in _meta_model(cfg).named_parameters():
        n = p.numel()
        if name == "backbone.embed.weight":
            out["embedding"] += n
        elif name.startswith("dense."):
            out["dense"] += n
        elif name.startswith("lm_head."):
            out["lm_head"] += n
        elif "norm" in name.split(".")[-2]:
            out["norms"] += n
        elif ".mlp." in name:
            out["mlp"] += n
        elif ".rg_lru." in name or ".linear_" in name or ".conv_" in name:
            out["recurrent"] += n
        else:
            out["attention"] += n
    out["total"] = sum(out.values())
    out["non_embedding"] = out["total"] - out["embedding"] - out["dense"]
    return out


def state_bytes(cfg: ModelConfig, context: int, batch: int = 1, kv_bytes: int = 2) -> dict[str, int]:
    """Decode state per sequence: windowed KV for local layers, full KV for global layers,
    conv tail (activation dtype) and fp32 RG-LRU state for recurrent layers (REFERENCE §2b)."""
    kv = rec = 0
    for kind in cfg.layer_kinds:
        if kind == "recurrent":
            rec += batch * (cfg.conv_width - 1) * cfg.lru_width * kv_bytes + batch * cfg.lru_width * 4
        else:
            slots = min(cfg.window, context) if kind == "local" else context
            kv += 2 * batch * cfg.num_kv_heads * slots * cfg.head_dim * kv_bytes
    return {"kv": kv, "recurrent": rec, "total": kv + rec}


def summary_rows(cfg: ModelConfig, contexts=(2048, 8192, 32768)) -> list[tuple[str, str]]:
    rows = [(k, str(v)) for k, v in cfg.to_dict().items() if k not in ("layer_kinds",)]
    kinds = cfg.layer_kinds
    rows.append(("layers", f"{len(kinds)} ({', '.join(f'{kinds.count(k)} {k}' for k in sorted(set(kinds)))})"))
    for k, v in param_counts(cfg).items():
        if v:
            rows.append((f"params.{k}", f"{v:,}"))
    if cfg.causal:
        for c in contexts:
            if c <= cfg.max_seq_len:
                b = state_bytes(cfg, c)
                rows.append((f"state@{c} (bf16 KV)", f"{b['total'] / 2**20:,.2f} MiB"))
    return rows

"""Strict loading of Hugging Face checkpoint directories for the four families.

Layouts: ``config.json`` + ``model.safetensors`` (or shards with ``model.safetensors.index.json``),
and for EmbeddingGemma the sentence-transformers layout (``modules.json``, the transformer at the
root, ``1_Pooling/``, ``2_Dense/``, ``3_Dense/``, a Normalize module). Every problem names the file
or tensor and what was expected; nothing is loaded half-way.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .gguf import is_gguf, load_gguf, read_gguf_config
from .hf_config import config_from_hf
from .keymaps import hf_key
from .presets import matryoshka_dims

__all__ = ["load", "read_config", "read_json", "safetensors_header"]

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_MAX_LISTED = 8
_POOLING = {"mean": "mean", "mean_tokens": "mean", "cls": "first", "cls_token": "first", "lasttoken": "last"}
_POOL_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the file holds every byte it declares."""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path} is truncated: {size} bytes, shorter than the 8-byte safetensors header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated or corrupt: header of {n} bytes declared, file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt: its safetensors header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for k, v in tensors.items():
        off = v.get("data_offsets") if isinstance(v, dict) else None
        ints = isinstance(off, list) and len(off) == 2 and all(type(x) is int for x in off)
        if not (ints and 0 <= off[0] <= off[1]) or not isinstance(v.get("shape"), list):
            raise CheckpointError(f"{path} is corrupt: tensor {k!r} has no valid data_offsets [begin, end] and shape")
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its header declares {8 + n + end} bytes, the file has {size}")
    for k, v in tensors.items():
        if v.get("dtype") not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {v.get('dtype')}; expected one of F32, BF16, F16")
    return tensors


def _weight_files(d: Path) -> dict[str, Path]:
    """HF key -> file that holds it, for a (possibly sharded) safetensors checkpoint in ``d``."""
    index = d / "model.safetensors.index.json"
    where: dict[str, Path] = {}
    if index.exists():
        j = read_json(index)
        wm = j.get("weight_map") if isinstance(j, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(f, str) for f in wm.values()):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = {f: d / f for f in set(wm.values())}
        headers = {f: safetensors_header(p) for f, p in files.items()}
        for key, f in wm.items():
            if key not in headers[f]:
                raise CheckpointError(f"{index} places tensor {key!r} in {files[f]}, which does not contain it")
            where[key] = files[f]
        return where
    shards = sorted(d.glob("*.safetensors"))
    if not shards:
        found = ", ".join(sorted(p.name for p in d.iterdir())) or "nothing"
        raise CheckpointError(f"no *.safetensors weights in {d} (found: {found})")
    for p in shards:
        for key in safetensors_header(p):
            if key in where:
                raise CheckpointError(f"tensor {key!r} appears in both {where[key]} and {p}")
            where[key] = p
    return where


def _st_modules(d: Path) -> list[dict] | None:
    """sentence-transformers modules.json, if this is that layout."""
    f = d / "modules.json"
    if not f.exists():
        return None
    mods = read_json(f)
    if not isinstance(mods, list) or not all(isinstance(m, dict) and "type" in m for m in mods):
        raise CheckpointError(f"{f} must be a list of modules with a 'type' each")
    return mods


def _encoder_parts(d: Path, mods: list[dict]) -> tuple[Path, list[Path], str]:
    """Check the sentence-transformers pipeline is Transformer -> Pooling -> Dense* -> Normalize."""
    kinds = [m["type"].rsplit(".", 1)[-1] for m in mods]
    if not kinds or kinds[0] != "Transformer" or kinds[-1] != "Normalize" or "Pooling" not in kinds:
        raise CheckpointError(
            f"{d / 'modules.json'}: expected Transformer, Pooling, Dense..., Normalize; found {kinds}"
        )
    root = d / mods[0].get("path", "")
    dense_dirs, pooling = [], "mean"
    for m, k in zip(mods[1:-1], kinds[1:-1]):
        sub = d / m.get("path", "")
        if k == "Pooling":
            pc = read_json(sub / "config.json")
            # sentence-transformers >= 6 writes "pooling_mode"; older releases one boolean per mode.
            mode = pc.get("pooling_mode") or [m for m in _POOL_MODES if pc.get(f"pooling_mode_{m}")]
            mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
            if mode not in _POOLING:
                raise CheckpointError(
                    f"{sub / 'config.json'}: pooling {mode!r} is not supported (mean, cls, lasttoken)"
                )
            pooling = _POOLING[mode]
        elif k == "Dense":
            dc = read_json(sub / "config.json")
            act = str(dc.get("activation_function", "")).rsplit(".", 1)[-1]
            if dc.get("bias", True) or act != "Identity":
                raise CheckpointError(f"{sub / 'config.json'}: expected a Dense without bias and Identity activation")
            dense_dirs.append(sub)
        else:
            raise CheckpointError(f"{d / 'modules.json'}: unsupported module {k!r}")
    return root, dense_dirs, pooling


def read_config(path: str | Path, *, allow_unknown_keys: bool = False) -> ModelConfig:
    """The ModelConfig of a checkpoint directory (or GGUF file), without reading its weights."""
    if is_gguf(path):
        return read_gguf_config(path)
    return _read(Path(path), allow_unknown_keys)[0]


def _read(d: Path, allow_unknown: bool) -> tuple[ModelConfig, Path, list[Path]]:
    if not d.exists():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    if not d.is_dir():
        raise CheckpointError(f"checkpoint path {d} is neither a directory nor a GGUF file")
    mods = _st_modules(d)
    root, dense_dirs, pooling = _encoder_parts(d, mods) if mods is not None else (d, [], "mean")
    cj = root / "config.json"
    try:
        cfg = config_from_hf(read_json(cj), where=str(cj), allow_unknown=allow_unknown, encoder=mods is not None)
    except KeyError as e:
        raise ConfigError(f"{cj}: missing required key {e.args[0]!r}") from None
    if mods is not None:
        if cfg.causal:
            raise CheckpointError(f"{cj}: a sentence-transformers encoder needs use_bidirectional_attention=true")
        dims = [_dense_out(p / "config.json") for p in dense_dirs]
        out = dims[-1] if dims else cfg.d_model
        cfg = cfg.replace(
            pooling=pooling,
            dense_dims=tuple(dims),
            matryoshka_dims=matryoshka_dims(out),
        )
    elif not cfg.causal:
        raise CheckpointError(
            f"{d}: a bidirectional gemma3_text model needs the sentence-transformers layout (modules.json)"
        )
    return cfg, root, dense_dirs


def _dense_out(cj: Path) -> int:
    j = read_json(cj)
    n = j.get("out_features") if isinstance(j, dict) else None
    if type(n) is not int or n < 1:
        raise CheckpointError(f"{cj}: a Dense module needs out_features (a positive integer), got {n!r}")
    return n


def _problems(title: str, items: list[str]) -> str:
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{title}: " + "; ".join(items[:_MAX_LISTED]) + more


def load(path: str | Path, *, allow_unknown_keys: bool = False) -> nn.Module:
    """Build the model a checkpoint directory (or a llama.cpp GGUF file) describes and load its
    weights (fp32, eval mode)."""
    from .build import build

    if is_gguf(path):
        return load_gguf(path)
    d = Path(path)
    cfg, root, dense_dirs = _read(d, allow_unknown_keys)
    model = build(cfg)
    where = _weight_files(root)
    expected: dict[str, tuple[str, torch.Size]] = {}
    for name, p in model.named_parameters():
        if name.startswith("dense."):
            continue
        expected[hf_key(cfg.family, name)] = (name, p.shape)
    tied_head = "lm_head.weight" if cfg.tie_embeddings and "lm_head.weight" in where else None

    missing = sorted(k for k in expected if k not in where)
    unexpected = sorted(k for k in where if k not in expected and k != tied_head)
    errors = []
    if missing:
        errors.append(_problems(f"missing tensors in {root}", missing))
    if unexpected:
        errors.append(_problems(f"unexpected tensors in {root}", [f"{k} (in {where[k].name})" for k in unexpected]))
    if errors:
        raise CheckpointError(" | ".join(errors))

    tensors = _read_tensors(where, set(expected) | ({tied_head} if tied_head else set()))
    for i, sub in enumerate(dense_dirs):
        f = sub / "model.safetensors"
        t = _read_tensors({k: f for k in safetensors_header(f)}, None)
        if set(t) != {"linear.weight"}:
            raise CheckpointError(f"{f}: expected exactly one tensor 'linear.weight', found {sorted(t)}")
        expected[f"{sub.name}/linear.weight"] = (f"dense.{i}.weight", model.dense[i].weight.shape)
        tensors[f"{sub.name}/linear.weight"] = t["linear.weight"]

    bad = [
        f"{k}: expected {tuple(s)}, found {tuple(tensors[k].shape)}"
        for k, (_, s) in expected.items()
        if tensors[k].shape != s
    ]
    if bad:
        raise CheckpointError(_problems(f"mis-shaped tensors in {d}", bad))
    if tied_head is not None:
        emb = tensors[hf_key(cfg.family, "backbone.embed.weight")]
        if tensors[tied_head].shape != emb.shape or not torch.equal(tensors[tied_head], emb):
            raise CheckpointError(
                f"{where[tied_head]}: lm_head.weight differs from the embedding, but the config ties them"
            )

    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, (name, _) in expected.items():
            params[name].copy_(tensors[k].to(torch.float32))
    check_finite(model, d, {name: k for k, (name, _) in expected.items()})
    return model


def check_finite(model: nn.Module, where, names: dict[str, str] | None = None) -> None:
    """Refuse weights holding NaN or inf (a corrupt or diverged checkpoint would otherwise export,
    with --no-verify, into an artifact that emits garbage)."""
    bad = [(names or {}).get(n, n) for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(_problems(f"non-finite weights (NaN or inf) in {where}", bad))


def _read_tensors(where: dict[str, Path], keys: set[str] | None) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for k, f in where.items():
        if keys is None or k in keys:
            by_file.setdefault(f, []).append(k)
    out = {}
    for f, ks in by_file.items():
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in ks:
                    out[k] = fh.get_tensor(k)
        except Exception as e:  # safetensors raises its own error types for corrupt data
            raise CheckpointError(f"{f} could not be read: {e}") from None
    return out

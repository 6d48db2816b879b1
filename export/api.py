"""The export protocol: ``export(model, backend, recipe, max_seq_len, ops, out_dir)`` -> artifact dir.

Steps (each reported through ``progress``): quantize, export + lower, verify, write. The artifact
is built in a staging directory and renamed into place only after verify passes, so a failed
export leaves nothing behind. Verify runs the artifact in its own runtime against the eager model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemma_edge.models import ModelConfig
from gemma_edge.models.errors import ExportError, InputError
from gemma_edge.quant import Recipe, parse_recipe

from .artifact import staging_dir, write_manifest
from .backend import Backend, LowerRequest, Prepared

__all__ = ["export", "BACKENDS", "OPS_MODES", "default_prefill_chunk", "special_tokens"]

OPS_MODES = ("portable", "fused")


def _executorch() -> Backend:
    from .executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend()


def _onnx() -> Backend:
    from .onnx_backend import OnnxBackend

    return OnnxBackend()


def _litert() -> Backend:
    from .litert_backend import LiteRTBackend

    return LiteRTBackend()


# backend name -> a function returning its Backend (export/backend.py), imported on first use.
BACKENDS: dict[str, Callable[[], Backend]] = {"executorch": _executorch, "onnx": _onnx, "litert": _litert}


def default_prefill_chunk(cfg: ModelConfig, max_seq_len: int, backend_cap: int = 128) -> int:
    """The prefill chunk export() uses when none is given: the backend's (``Backend.prefill_chunk``)."""
    # The RG-LRU closed form holds a (T, T, lru_width) decay tensor per chunk: keep T modest there.
    cap = min(backend_cap, 64) if "recurrent" in cfg.layer_kinds else backend_cap
    return max(1, min(cap, max_seq_len))


def special_tokens(cfg: ModelConfig, tokenizer_path: Path | None) -> dict:
    """Gemma's ids (REFERENCE §1b): pad 0, eos 1, bos 2; Gemma 3 instruction models also stop on 106."""
    ids = {"pad": 0, "eos": [1], "bos": 2}
    if tokenizer_path is not None:
        from gemma_edge.models import Tokenizer

        tok = Tokenizer(tokenizer_path, cfg.family)
        ids = {"pad": tok.pad_id, "eos": [tok.eos_id], "bos": tok.bos_id}
    if cfg.family == "gemma3" and cfg.vocab_size > 106:
        ids["eos"] = sorted({*ids["eos"], 106})
    return ids


def calibration(cfg: ModelConfig, rec: Recipe, tokenizer_path: Path | None) -> list[int] | None:
    """The token ids 4-bit PTQ calibrates on (quant/ptq.py), or None where it needs none."""
    if not rec.has_int4 or rec.ptq == "rtn" or not cfg.causal:
        return None
    from gemma_edge.models import Tokenizer
    from gemma_edge.quant.ptq import calibration_ids

    tok = Tokenizer(tokenizer_path, cfg.family) if tokenizer_path is not None else None
    return calibration_ids(cfg, tok)


def _eager_quantized(model: nn.Module, rec: Recipe, backend: str, artifact_dir: Path) -> nn.Module:
    """The eager model quantized as the artifact's runtime runs it (Backend.lowering_reference), from
    the fp32 ``model``, with the calibration and ops mode the export used."""
    tok = artifact_dir / "tokenizer.model"
    calib = calibration(model.config, rec, tok if tok.exists() else None)
    ops = json.loads((artifact_dir / "manifest.json").read_text()).get("ops", "portable")
    ops = ops if ops in OPS_MODES else "portable"
    return BACKENDS[backend]().lowering_reference(model, rec, ops, artifact_dir, calibration=calib)


def _verify_tokens(cfg: ModelConfig, max_seq_len: int, tokenizer=None, seed: int = 0) -> list[int]:
    """Real text (public-domain prose, runtime_py/verify_text.txt) through the model's tokenizer when
    it has one, since a trained model's quantization error on random ids says nothing of its error
    on text; else seeded random ids (random-init models), long enough to cross the local window
    several times where max_seq_len allows it."""
    if tokenizer is not None:
        ids = tokenizer.encode(_verify_text())
        return ids[: min(max_seq_len, 160, len(ids))]
    n = min(max_seq_len, max(48, min(4 * cfg.window + 8, 96)))
    rng = random.Random(seed)
    return [rng.randrange(3, cfg.vocab_size) for _ in range(n)]


def _verify_text() -> str:
    from importlib.resources import files

    return files("gemma_edge.runtime_py").joinpath("verify_text.txt").read_text(encoding="utf-8")


def _check_request(model: nn.Module, b: Backend, rec: Recipe, max_seq_len: int, ops: str,
                   prefill_chunk: int | None, tok: Path | None, options: dict) -> int:  # fmt: skip
    """Refuse what cannot be exported before any work is done; return the prefill chunk."""
    cfg = model.config
    if ops not in OPS_MODES:
        raise InputError(f"unknown ops mode {ops!r}; known: {', '.join(OPS_MODES)}")
    b.check_supported(rec, ops)
    b.check_options(options, ops)
    if rec.embedding_bits is not None and not cfg.causal:
        raise ExportError(
            f"recipe {rec.name}: embedding quantization is for causal LMs (EmbeddingGemma: use {rec.base})"
        )
    if not 0 < max_seq_len <= cfg.max_seq_len:
        raise InputError(f"max_seq_len must be in 1..{cfg.max_seq_len} for this model, got {max_seq_len}")
    chunk = default_prefill_chunk(cfg, max_seq_len, b.prefill_chunk) if prefill_chunk is None else prefill_chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 < chunk <= max_seq_len:
        raise InputError(f"prefill_chunk must be in 1..{max_seq_len}, got {chunk}")
    if tok is not None and not tok.is_file():
        raise InputError(f"tokenizer file {tok} does not exist")
    if tok is not None:
        from gemma_edge.models import Tokenizer

        n = Tokenizer(tok, cfg.family).vocab_size
        if n > cfg.vocab_size:
            raise InputError(f"tokenizer {tok} has {n} pieces, more than the model's vocab_size {cfg.vocab_size}")
    return chunk


def _metadata(cfg: ModelConfig, special: dict, chunk: int, max_seq_len: int) -> dict:
    """The constant methods ExecuTorch's LLM runner reads (recorded by every backend's manifest)."""
    return {
        "get_max_seq_len": chunk, "get_max_context_len": max_seq_len, "get_vocab_size": cfg.vocab_size,
        "get_bos_id": special["bos"], "get_eos_ids": special["eos"], "use_kv_cache": True,
        "enable_dynamic_shape": chunk > 1,
    }  # fmt: skip


def _verify(b: Backend, model, rec: Recipe, ops: str, d: Path, prepared: Prepared, fp32: Callable) -> dict:
    """The artifact's parity in its runtime against ``fp32()`` (built after the lowering reference);
    an ExportError (the staging dir then goes) if it misses."""
    eager_q = b.lowering_reference(model, rec, ops, d, prepared) if rec.is_quantized else None
    parity = run_verify(d, fp32(), rec, b.name, eager_quantized=eager_q)
    if parity["missed"]:
        raise ExportError(f"export to {b.name} with {rec.name} failed parity: " + "; ".join(parity["missed"]))
    return parity


def export(
    model: nn.Module,
    backend: str,
    recipe: str | Recipe = "fp32",
    max_seq_len: int = 1024,
    ops: str = "portable",
    out_dir: str | Path = "artifact",
    *,
    prefill_chunk: int | None = None,
    group_size: int = 32,
    ptq: str = "gptq",
    tokenizer_path: str | Path | None = None,
    verify: bool = True,
    overwrite: bool = False,
    inplace: bool = False,
    reference: Callable[[], nn.Module] | None = None,
    source: str | None = None,
    progress: Callable[[str], None] = print,
    options: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` (an eval fp32 gemma_edge model) to an artifact directory; return its path.

    ``inplace=True`` quantizes ``model`` itself instead of a copy, halving peak memory for large
    models; the caller must not use it afterwards, and verify then needs ``reference``, a function
    that rebuilds the fp32 model (from a checkpoint, or a preset and seed), called after lowering.
    ``options`` are the backend's own (``Backend.options``; onnx: ``ort_format`` also writes
    ``model.ort``, the ORT-format model that ONNX Runtime Mobile loads)."""
    cfg: ModelConfig = model.config
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    rec = parse_recipe(recipe, group_size, ptq) if isinstance(recipe, str) else recipe
    if options is not None and not isinstance(options, dict):
        raise InputError(f"options must be a dict of {backend} options, got {type(options).__name__}")
    b, options = BACKENDS[backend](), dict(options or {})
    tok = Path(tokenizer_path) if tokenizer_path else None
    chunk = _check_request(model, b, rec, max_seq_len, ops, prefill_chunk, tok, options)
    if inplace and verify and reference is None:
        raise InputError(
            "inplace=True consumes the fp32 model verify compares against: pass reference= or verify=False"
        )
    special = special_tokens(cfg, tok)
    metadata = _metadata(cfg, special, chunk, max_seq_len)
    timings = {}
    with staging_dir(Path(out_dir), overwrite=overwrite) as d:
        t0 = time.perf_counter()
        progress(f"[1/4] quantize: {rec.name}" + (f" ({rec.ptq})" if rec.has_int4 else "")
                 + (" (nothing to do)" if not rec.is_quantized else ""))  # fmt: skip
        prepared = b.prepare(model, rec, ops, copy_model=not inplace, calibration=calibration(cfg, rec, tok))
        timings["quantize_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        progress(f"[2/4] export + lower to {backend} ({ops} ops)")
        req = LowerRequest(max_seq_len, chunk, metadata, rec, d, options)
        methods = b.lower(prepared, req, progress=lambda m: progress(f"      {m}"))
        timings["lower_s"] = time.perf_counter() - t0
        if tok is not None:
            shutil.copy(tok, d / "tokenizer.model")
        manifest = {
            "family": cfg.family, "config": cfg.to_dict(), "source": source, "backend": backend,
            "runtime_version": b.runtime_version(), "model_file": b.model_file, "recipe": rec.to_dict(),
            "ops": ops, "max_seq_len": max_seq_len, "prefill_chunk": chunk, "methods": methods,
            "special_tokens": special, "metadata": metadata, "export_timings": timings, "parity": None,
        }  # fmt: skip
        manifest.update(b.bundle(d, manifest, tok, progress=lambda m: progress(f"      {m}")))
        write_manifest(d, manifest)
        if verify:
            t0 = time.perf_counter()
            progress("[3/4] verify against the eager model")
            manifest["parity"] = _verify(b, model, rec, ops, d, prepared, reference if inplace else (lambda: model))
            timings["verify_s"] = time.perf_counter() - t0
        else:
            progress("[3/4] verify skipped")
        progress(f"[4/4] write {out_dir}")
        write_manifest(d, manifest)
    return Path(out_dir)


def run_verify(artifact_dir: Path, model: nn.Module, rec: Recipe, backend: str, eager_quantized=None) -> dict:
    """Parity of the artifact in ``artifact_dir`` against ``model`` (fp32) and its eager quantization
    (``eager_quantized``, or quantized here from ``model``)."""
    from gemma_edge.runtime_py import load
    from gemma_edge.runtime_py.verify import causal_parity, check, effective_limits, encoder_parity, thresholds_for

    cfg = model.config
    base = rec.base
    if rec.is_quantized:
        lowering = (
            eager_quantized if eager_quantized is not None else _eager_quantized(model, rec, backend, artifact_dir)
        )
        refs = {"lowering": lowering, "quantization": model}
    else:
        refs = {"reference": model}
    session = load(artifact_dir)
    with torch.no_grad():
        if cfg.causal:
            tokens = _verify_tokens(cfg, session.max_seq_len, session.tokenizer)
            results = causal_parity(session, refs, tokens)
            inputs = {"tokens": len(tokens), "source": "text" if session.tokenizer else "random ids"}
        else:
            rng = random.Random(0)
            lengths = [5, min(session.max_seq_len, 3 * cfg.window + 2), 1]
            inputs = [[rng.randrange(3, cfg.vocab_size) for _ in range(n)] for n in lengths]
            results = encoder_parity(session, refs, inputs)
            inputs = {"tokens": sum(map(len, inputs)), "source": "random ids"}
    limits = thresholds_for(base, backend, cfg.causal)
    return {
        "results": results, "thresholds": limits, "effective_thresholds": effective_limits(results, limits),
        "missed": check(results, limits), "inputs": inputs,
    }  # fmt: skip

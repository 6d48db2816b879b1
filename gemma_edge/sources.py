"""Where a model comes from on the command line: a preset, a checkpoint directory or a GGUF file."""

from __future__ import annotations

from pathlib import Path

from gemma_edge.models.errors import InputError


def gguf_tokenizer_file(p: Path) -> Path:
    """The SentencePiece model rebuilt from a GGUF's tokenizer arrays, in a directory removed at exit."""
    import atexit
    import shutil
    import tempfile

    from gemma_edge.models.gguf import gguf_tokenizer

    d = tempfile.mkdtemp(prefix="gemma-edge-tok-")
    atexit.register(shutil.rmtree, d, True)
    return gguf_tokenizer(p, Path(d) / "tokenizer.model")


def resolve(source: str, seed: int, allow_unknown: bool = False, tokenizer: bool = True):
    """A preset name (random init with ``seed``), a checkpoint directory or a GGUF file -> (model,
    tokenizer path or None, source description)."""
    from gemma_edge import models
    from gemma_edge.models.gguf import is_gguf

    p = Path(source)
    if is_gguf(p):
        return models.load(p), (gguf_tokenizer_file(p) if tokenizer else None), {"checkpoint": str(p.resolve())}
    if p.exists():
        model = models.load(p, allow_unknown_keys=allow_unknown)
        tok = p / "tokenizer.model"
        return model, (tok if tok.exists() else None), {"checkpoint": str(p.resolve())}
    if source not in models.PRESETS:
        raise InputError(f"{source!r} is neither a checkpoint directory nor a preset ({', '.join(models.PRESETS)})")
    return models.build(source, seed=seed), None, {"preset": source, "seed": seed}


def reference_from_manifest(manifest: dict, override: str | None, seed: int, *, teacher: bool = False):
    """The eager model an artifact is compared with: ``override``, else its source; with ``teacher``,
    a QAT checkpoint's own fp32 teacher instead (what "KL vs fp32" means to a user)."""
    if override:
        return resolve(override, seed, tokenizer=False)[0]
    src = manifest.get("source") or {}
    if teacher and (src.get("qat") or {}).get("teacher"):
        src = src["qat"]["teacher"]
    if "preset" in src:
        return resolve(src["preset"], src.get("seed", 0), tokenizer=False)[0]
    if "checkpoint" in src and Path(src["checkpoint"]).exists():
        return resolve(src["checkpoint"], seed, tokenizer=False)[0]
    raise InputError("the manifest names no reachable source model: pass --reference PRESET_OR_CHECKPOINT")

"""The artifact manifest as a runtime reads it: format version, required keys, every file hashed.

An artifact directory holds the model file(s), ``manifest.json`` and optionally
``tokenizer.model``; the exporter (export/artifact.py) writes it, any runtime reads it here, so a
runtime process never loads the exporters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gemma_edge.models.config import ModelConfig
from gemma_edge.models.errors import ArtifactError, ConfigError

__all__ = ["FORMAT_VERSION", "MANIFEST", "REQUIRED", "sha256_file", "read_manifest"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# What a runtime reads from a manifest: refused up front when missing, not as a KeyError later.
REQUIRED = {"format_version": int, "backend": str, "model_file": str, "files": dict, "config": dict,
            "max_seq_len": int, "special_tokens": dict, "methods": dict, "recipe": dict, "ops": str}  # fmt: skip


def read_manifest(d: Path, *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of artifact directory ``d``, with its required keys checked and (by default)
    every file checked against its sha256: the model file, and every other file in the directory
    a runtime could open (all must be listed; hidden files aside)."""
    d = Path(d)
    if not d.is_dir():
        raise ArtifactError(f"artifact directory {d} does not exist")
    f = d / MANIFEST
    if not f.is_file():
        raise ArtifactError(f"{d} is not an artifact: {MANIFEST} is missing")
    try:
        m = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{f}: expected a JSON object, got {type(m).__name__}")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{f}: format_version {m.get('format_version')!r}, this gemma-edge reads {FORMAT_VERSION}")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise ArtifactError(f"{f}: missing required keys {', '.join(missing)}")
    wrong = [f"{k} ({type(m[k]).__name__}, expected {t.__name__})" for k, t in REQUIRED.items()
             if not isinstance(m[k], t) or (t is int and isinstance(m[k], bool))]  # fmt: skip
    if wrong:
        raise ArtifactError(f"{f}: wrong types: {', '.join(wrong)}")
    _check_contents(m, f)
    files = m["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(f"{f}: 'files' must map file names to sha256 hex digests")
    if m["model_file"] not in files:
        raise ArtifactError(f"{f}: model_file {m['model_file']!r} is not in 'files', so it would not be hashed")
    if check_files:
        unlisted = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != MANIFEST
                          and not p.name.startswith(".") and p.name not in files)  # fmt: skip
        if unlisted:
            raise ArtifactError(f"{d}: files not in the manifest (not hashed, refused): {', '.join(unlisted)}")
        for name, digest in files.items():
            p = d / name
            if Path(name).name != name:
                raise ArtifactError(f"{f}: 'files' names {name!r}, which is not a file of the artifact directory")
            if not p.is_file():
                raise ArtifactError(f"artifact file {p} is missing")
            if sha256_file(p) != digest:
                raise ArtifactError(f"artifact file {p} does not match its sha256 in {MANIFEST}: tampered or truncated")
    return m


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_contents(m: dict[str, Any], f: Path) -> None:
    """What the sessions read inside the required keys: a config a model can be built from, the
    stop tokens, the method signatures, the recipe's name."""
    try:
        ModelConfig.from_dict(m["config"])
    except (ConfigError, TypeError, ValueError) as e:
        raise ArtifactError(f"{f}: 'config' is not a valid model config: {e}") from None
    if not _is_int(m["max_seq_len"], 1) or not _is_int(m.get("prefill_chunk", 1), 1):
        raise ArtifactError(f"{f}: max_seq_len and prefill_chunk must be integers >= 1")
    eos = m["special_tokens"].get("eos")
    if not (isinstance(eos, list) and all(_is_int(t, 0) for t in eos)):
        raise ArtifactError(f"{f}: special_tokens.eos must be a list of token ids, got {eos!r}")
    if not isinstance(m["recipe"].get("name"), str):
        raise ArtifactError(f"{f}: recipe.name must be a string")
    for name, sig in m["methods"].items():
        ok = isinstance(sig, dict) and all(
            isinstance(sig.get(k), list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in sig[k])
            for k in ("inputs", "outputs")
        )
        if not ok:
            raise ArtifactError(f"{f}: methods.{name} must have 'inputs' and 'outputs' lists of named tensors")

"""Artifact directories: model file + manifest.json (+ tokenizer.model), written atomically.

The directory is built under a temporary name beside its destination and renamed at the end, so a
failed export leaves nothing behind. The manifest records the sha256 of every file; loading checks
them, so a tampered or truncated artifact is refused with the file named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gemma_edge.models.errors import ArtifactError

__all__ = ["FORMAT_VERSION", "MANIFEST", "sha256_file", "staging_dir", "write_manifest", "read_manifest"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def staging_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` only if the body succeeds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"output directory {out_dir} already exists (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``d`` (but the manifest) into ``manifest['files']`` and write it."""
    files = {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(d: Path, *, check_files: bool = True) -> dict[str, Any]:
    d = Path(d)
    if not d.is_dir():
        raise ArtifactError(f"artifact directory {d} does not exist")
    f = d / MANIFEST
    if not f.is_file():
        raise ArtifactError(f"{d} is not an artifact: {MANIFEST} is missing")
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{f} is not valid JSON: {e}") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{f}: format_version {m.get('format_version')!r}, this gemma-edge reads {FORMAT_VERSION}")
    if check_files:
        for name, digest in m.get("files", {}).items():
            p = d / name
            if not p.is_file():
                raise ArtifactError(f"artifact file {p} is missing")
            if sha256_file(p) != digest:
                raise ArtifactError(f"artifact file {p} does not match its sha256 in {MANIFEST}: tampered or truncated")
    return m

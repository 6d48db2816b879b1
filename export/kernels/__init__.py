"""gemma_edge's compiled kernels for ExecuTorch: built on first use (cached), loaded into the runtime.

The library is built with CMake against the installed executorch wheel's headers and CMake
package, into a cache directory keyed by the source and the executorch version
(``$GEMMA_EDGE_CACHE`` or ``~/.cache/gemma_edge``). ``GEMMA_EDGE_EXECUTORCH_KERNELS`` points at a
prebuilt library instead. This module also defines the ``.out`` variants of the custom ops, which
``to_executorch`` substitutes for the functional ops when a program is emitted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch

import gemma_edge.models.ops  # noqa: F401  (defines the functional ops)
from gemma_edge.models.errors import ArtifactError, ExportError

__all__ = ["build_executorch_kernels", "load_executorch_kernels", "kernel_library_path"]

_SRC = Path(__file__).parent
_SOURCES = ("gemma_edge_executorch.cpp", "CMakeLists.txt")
_LOADED: Path | None = None

# -- .out variants (export side) ----------------------------------------------------------------
_lib = torch.library.Library("gemma_edge", "FRAGMENT")
_lib.define(
    "sliding_window_attention.out(Tensor q, Tensor k, Tensor v, Tensor q_pos, Tensor k_pos, SymInt window, "
    "float scale, float softcap, bool causal, *, Tensor(a!) out) -> Tensor(a!)"
)
_lib.define(
    "ring_attention.out(Tensor q, Tensor k, Tensor v, Tensor k_ring, Tensor v_ring, Tensor q_pos, Tensor ring_pos, "
    "Tensor src, SymInt window, float scale, float softcap, *, Tensor(a!) out, Tensor(b!) k_rows, "
    "Tensor(c!) v_rows) -> (Tensor(a!), Tensor(b!), Tensor(c!))"
)
_lib.define(
    "rg_lru.out(Tensor x, Tensor gate_x_weight, Tensor gate_x_bias, Tensor gate_a_weight, Tensor gate_a_bias, "
    "Tensor a_param, Tensor pos, Tensor h0, float c, *, Tensor(a!) y, Tensor(b!) h) -> (Tensor(a!), Tensor(b!))"
)


def _attention_out(q, k, v, q_pos, k_pos, window, scale, softcap, causal, *, out):
    res = torch.ops.gemma_edge.sliding_window_attention(q, k, v, q_pos, k_pos, window, scale, softcap, causal)
    out.resize_(res.shape).copy_(res)
    return out


def _ring_attention_out(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, window, scale, softcap, *, out, k_rows, v_rows):
    res = torch.ops.gemma_edge.ring_attention(q, k, v, k_ring, v_ring, q_pos, ring_pos, src, window, scale, softcap)
    for t, r in zip((out, k_rows, v_rows), res):
        t.resize_(r.shape).copy_(r)
    return out, k_rows, v_rows


def _rg_lru_out(x, gxw, gxb, gaw, gab, a_param, pos, h0, c, *, y, h):
    ry, rh = torch.ops.gemma_edge.rg_lru(x, gxw, gxb, gaw, gab, a_param, pos, h0, c)
    y.resize_(ry.shape).copy_(ry)
    h.resize_(rh.shape).copy_(rh)
    return y, h


for _key in ("CompositeExplicitAutograd", "Meta"):
    _lib.impl("sliding_window_attention.out", _attention_out, _key)
    _lib.impl("ring_attention.out", _ring_attention_out, _key)
    _lib.impl("rg_lru.out", _rg_lru_out, _key)


# -- build and load (runtime side) --------------------------------------------------------------
def _cache_dir() -> Path:
    root = Path(os.environ.get("GEMMA_EDGE_CACHE", Path.home() / ".cache" / "gemma_edge"))
    h = hashlib.sha256(version("executorch").encode())
    for name in _SOURCES:
        h.update((_SRC / name).read_bytes())
    return root / "kernels" / h.hexdigest()[:16]


def kernel_library_path() -> Path:
    env = os.environ.get("GEMMA_EDGE_EXECUTORCH_KERNELS")
    return Path(env) if env else _cache_dir() / "libgemma_edge_executorch.so"


def build_executorch_kernels(force: bool = False, progress=lambda m: None) -> Path:
    """Compile the kernel library (about 10 s) unless a cached build exists; return its path."""
    lib = kernel_library_path()
    if lib.exists() and not force:
        return lib
    if os.environ.get("GEMMA_EDGE_EXECUTORCH_KERNELS"):
        raise ArtifactError(f"GEMMA_EDGE_EXECUTORCH_KERNELS points at {lib}, which does not exist")
    import executorch

    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None:
        raise ExportError("building the fused-op kernels needs CMake >= 3.28 (pip install cmake)")
    work = lib.parent / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in _SOURCES:
        shutil.copy(_SRC / name, work / name)
    prefix = Path(next(iter(executorch.__path__)))  # a namespace package: no __file__
    progress(f"building ExecuTorch kernels in {work}")
    for cmd in (
        [
            cmake,
            "-S",
            str(work),
            "-B",
            str(work / "out"),
            f"-DCMAKE_PREFIX_PATH={prefix}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        [cmake, "--build", str(work / "out"), "-j", "2"],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ExportError(f"kernel build failed ({' '.join(cmd[:2])}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    shutil.copy(work / "out" / lib.name, lib)
    return lib


def load_executorch_kernels(build: bool = True) -> Path:
    """Register the kernels with ExecuTorch's runtime in this process (once)."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    lib = build_executorch_kernels() if build else kernel_library_path()
    if not lib.exists():
        raise ArtifactError(f"the fused-op kernel library {lib} is missing: build it with build_executorch_kernels()")
    import executorch.extension.pybindings.portable_lib  # noqa: F401  (the runtime the kernels register into)

    try:
        torch.ops.load_library(str(lib))
    except OSError as e:
        raise ArtifactError(f"could not load the fused-op kernel library {lib}: {e}") from None
    _LOADED = lib
    return lib

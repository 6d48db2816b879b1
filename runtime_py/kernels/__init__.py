"""gemma_edge's compiled kernels for ExecuTorch: built on first use (cached), loaded into the runtime.

The library is built with CMake against the installed executorch wheel's headers and CMake
package, into a cache directory keyed by the source and the executorch version
(``$GEMMA_EDGE_CACHE`` or ``~/.cache/gemma_edge``). ``GEMMA_EDGE_EXECUTORCH_KERNELS`` points at a
prebuilt library instead. The ``.out`` variants of the ops, which ``to_executorch`` substitutes
for the functional ops when a program is emitted, are export's (export/executorch_backend/ops.py).
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

from gemma_edge.models.errors import ArtifactError, ExportError

__all__ = ["build_executorch_kernels", "load_executorch_kernels", "kernel_library_path", "cache_root", "cpu_flags"]

_SRC = Path(__file__).parent
_SOURCES = ("gemma_edge_executorch.cpp", "tile8_head.cpp", "common.h", "CMakeLists.txt")
_LOADED: Path | None = None


def cpu_flags() -> str:
    """The CPU's flags line from /proc/cpuinfo ('' where there is none): builds and packed layouts
    depend on the instruction set, so caches shared across machine kinds key on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def cache_root() -> Path:
    """``$GEMMA_EDGE_CACHE``, default ``~/.cache/gemma_edge``: built kernels and packed-weight caches."""
    return Path(os.environ.get("GEMMA_EDGE_CACHE", Path.home() / ".cache" / "gemma_edge"))


def _cache_dir() -> Path:
    root = cache_root()
    h = hashlib.sha256(version("executorch").encode())
    h.update(cpu_flags().encode())  # built with -march=native: a cache shared across machine kinds must not mix
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

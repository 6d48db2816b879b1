"""Resident memory: drop a mapped model file's pages once the runtime holds what it needs of them."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

__all__ = ["release_file_pages"]

_MADV_DONTNEED = 4


def release_file_pages(path: str | Path) -> int:
    """Drop this process's resident pages of the mapped ``path``; return how many mappings.

    The runtimes map their weight files (ExecuTorch's Python loader maps the .pte and locks it; ONNX
    Runtime maps page-aligned external data; LiteRT maps the .tflite). Once a session is loaded, the
    weights that XNNPACK or MLAS repacked live in the runtime's own copy, so those file pages are dead
    weight; the few constants read at run time (a quantized embedding table) fault back in from the
    file, row by row. This is what an mmap loader without mlock gives on a device: the kernel keeps
    the file pages only while they are used. Linux only; a no-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return 0
    target = str(Path(path).resolve())
    libc = ctypes.CDLL(None, use_errno=True)
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            if not line.rstrip().endswith(target):
                continue
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            addr, size = ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo)
            libc.munlock(addr, size)
            if libc.madvise(addr, size, _MADV_DONTNEED) == 0:
                n += 1

    return n

"""Resident memory: drop a mapped model file's pages once the runtime holds what it needs of them."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

__all__ = ["release_file_pages"]

_MADV_RANDOM, _MADV_DONTNEED = 1, 4


def release_file_pages(path: str | Path, *, random_reads: bool = False) -> int:
    """Drop this process's resident pages of the mapped ``path``; return how many mappings.

    The runtimes map their weight files (ExecuTorch's Python loader maps the .pte and locks it; ONNX
    Runtime maps page-aligned external data; LiteRT maps the .tflite). Once a session is loaded, the
    weights that XNNPACK or MLAS repacked live in the runtime's own copy, so those file pages are dead
    weight; what is read at run time (a quantized embedding table) faults back in from the file. This
    is what an mmap loader without mlock gives on a device. Linux only; a no-op elsewhere.

    ``random_reads``: the file is read afterwards only a row here and there (an embedding lookup,
    while the runtime's packed copy serves the head). Its mappings are marked MADV_RANDOM and its
    cached pages dropped, so that each lookup maps the page it reads: a page-cache folio from the
    load's sequential read is up to 2 MiB, and mapping whole folios brought back most of a
    262k-row table for a 128-token prompt.
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
            if random_reads:
                libc.madvise(addr, size, _MADV_RANDOM)
    if random_reads and n:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages no process maps any more
        finally:
            os.close(fd)
    return n

"""Freed tensor memory goes back to the OS during CPU training (glibc's malloc holds it otherwise).

PyTorch's CPU allocator takes every tensor from the C library's ``malloc``. glibc serves a block of
more than ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and unmaps it when freed; but by default
that threshold is *dynamic*: each freed mmapped block raises it (up to 32 MiB), so after the first
few frees the activations of a forward pass (a few MiB each) come from the heap, where freed memory
stays resident and fragmented. Measured on SmolLM2-135M, LoRA, one 1024-token sequence: peak RSS
3.9 GiB with the dynamic threshold, 2.5 GiB with it fixed at glibc's own default of 128 KiB — the
live tensors are the same; only what the process keeps after freeing them differs (README, Memory
and speed). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, ...)``, as setting the environment
variable ``MALLOC_MMAP_THRESHOLD_`` would before start) turns the dynamic adjustment off; a user who
set that variable keeps their value. Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, held fixed
_done: list[bool] = []


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap threshold for this process (once); True when it is set (now or before)."""
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))  # returns 0 where unsupported
        except (OSError, AttributeError):  # not glibc: no mallopt
            ok = False
    _done.append(ok)
    return ok

"""engine/cpu_memory.py: with glibc's mmap threshold held fixed, freed blocks of a few MiB leave the RSS
even when blocks still in use lie between them (the fragmentation a forward pass leaves)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Each child: free one 16 MiB block (under glibc's dynamic threshold this raises the threshold to 16
# MiB), allocate 120 blocks of 2 MiB and touch them, free every other one; print the RSS drop in MiB.
CHILD = r"""
import ctypes, ctypes.util, sys, psutil
from mmadapt.engine.cpu_memory import return_freed_memory_to_os
if sys.argv[1] == "fixed":
    assert return_freed_memory_to_os()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
blocks = []
for _ in range(120):
    p = libc.malloc(2 << 20); ctypes.memset(p, 1, 2 << 20); blocks.append(p)
rss = lambda: psutil.Process().memory_info().rss / 2**20
before = rss()
for p in blocks[::2]:
    libc.free(p)
print(round(before - rss()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_leave_the_rss_only_with_the_threshold_fixed():
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    dropped = {
        mode: int(subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env_free).stdout)
        for mode in ("dynamic", "fixed")
    }
    assert dropped["fixed"] >= 100  # 60 freed blocks of 2 MiB: unmapped
    assert dropped["dynamic"] <= 20  # the heap keeps them (held between live blocks)

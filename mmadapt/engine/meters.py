"""Cost meters: wall time, peak memory, trainable parameters, artifact bytes, latency."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil


class PeakMemory:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 10 ms.

    On CUDA the peak allocated device memory is reported too (``peak_gpu_mib``).
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_mib = 0.0
        self.peak_gpu_mib = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process(os.getpid())

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_mib = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)
        if torch.cuda.is_available():
            self.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20


class Stopwatch:
    """``with Stopwatch() as w: ...`` then ``w.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def trainable_parameters(model) -> int:
    """Parameters that receive gradients."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def folder_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return int(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))


def latency_percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50 and p95 of per-item latencies, in milliseconds."""
    if not seconds:
        return {"latency_p50_ms": None, "latency_p95_ms": None}
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "latency_p50_ms": round(float(np.percentile(arr, 50)), 2),
        "latency_p95_ms": round(float(np.percentile(arr, 95)), 2),
    }

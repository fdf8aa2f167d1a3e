"""The loaded versions of ``mmadapt serve``: each version folder loaded once, each with one worker.

A :class:`Loaded` version runs its predictions one at a time in its own worker thread (a model
is not shared between threads mid-generation) and holds at most ``max_queue`` requests waiting
behind the running one: one more is refused (:class:`QueueFull`, HTTP 429) instead of queueing
without bound. The :class:`Pool` is a small cache keyed by version folder: a version is loaded
once (concurrent requests for it wait for the one load), and when more than ``cache_size``
versions are loaded the least recently used one that is neither kept (current, or in a split)
nor busy is dropped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mmadapt.engine.runner import LoadedArtifact, load_artifact


class QueueFull(Exception):
    """The version's queue holds ``max_queue`` waiting requests already."""


class Evicted(Exception):
    """The version was dropped from the cache between routing and submitting (get it again)."""


class Loaded:
    """One loaded version: its artifact, its worker thread and its bounded queue."""

    def __init__(self, version_dir: Path, artifact: LoadedArtifact, max_queue: int):
        self.version_dir = version_dir
        self.recipe = version_dir.parent.name
        self.version = version_dir.name
        self.label = f"{self.recipe}@{self.version}"
        self.artifact = artifact
        self.modality = artifact.modality
        self.max_queue = max_queue
        self.in_flight = 0  # the running prediction and those waiting for the worker
        self.closed = False
        self.last_used = time.monotonic()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mmadapt-{self.label}")

    def submit(self, inputs: list[Any]) -> asyncio.Future:
        """Queue a prediction; an awaitable of its list of Predictions. Raises QueueFull or Evicted."""
        with self._lock:
            if self.closed:
                raise Evicted(self.label)
            if self.in_flight > self.max_queue:
                raise QueueFull(self.label)
            self.in_flight += 1
            self.last_used = time.monotonic()
            future = self._executor.submit(self.artifact.predictor.predict, inputs)
        future.add_done_callback(self._done)  # runs on completion and on cancellation alike
        return asyncio.wrap_future(future)

    def _done(self, _future) -> None:
        with self._lock:
            self.in_flight -= 1

    def close_if_idle(self) -> bool:
        with self._lock:
            if self.in_flight:
                return False
            self.closed = True
        self._executor.shutdown(wait=False)
        return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._executor.shutdown(wait=True)  # in-flight predictions finish


class Pool:
    """Loaded versions keyed by version folder (a small LRU cache)."""

    def __init__(self, *, max_queue: int = 8, cache_size: int = 4, loader: Callable[[Path], LoadedArtifact] = load_artifact):
        self.max_queue = max_queue
        self.cache_size = cache_size
        self.loader = loader
        self._loaded: OrderedDict[Path, Loaded] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}
        self._keep: set[Path] = set()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a version was loaded (each once while cached)

    def get(self, version_dir: str | Path) -> Loaded:
        """The loaded version (loaded now, once, if it is not in the cache). Blocking: call it off the event loop."""
        key = Path(version_dir).resolve()
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            loaded = Loaded(Path(version_dir), self.loader(key), self.max_queue)
            with self._lock:
                self._loaded[key] = loaded
                self._loading.pop(key, None)
                self.loads += 1
        self.evict(spare=key)  # never the version just loaded: its caller is about to use it
        return loaded

    def cached(self, version_dir: str | Path) -> Loaded | None:
        with self._lock:
            return self._loaded.get(Path(version_dir).resolve())

    def keep(self, version_dirs: Iterable[Path]) -> None:
        """The versions that are never dropped (each recipe's current one and its split's)."""
        with self._lock:
            self._keep = {Path(d).resolve() for d in version_dirs}

    def evict(self, spare: Path | None = None) -> list[str]:
        """Drop least recently used idle versions (not kept, not ``spare``) while more than ``cache_size`` are loaded."""
        dropped = []
        with self._lock:
            for key in list(self._loaded):
                if len(self._loaded) <= self.cache_size:
                    break
                loaded = self._loaded[key]
                if key not in self._keep and key != spare and loaded.close_if_idle():
                    del self._loaded[key]
                    dropped.append(loaded.label)
        return dropped

    def labels(self) -> list[str]:
        with self._lock:
            return [loaded.label for loaded in self._loaded.values()]

    def close(self) -> None:
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), OrderedDict()
        for item in loaded:
            item.close()

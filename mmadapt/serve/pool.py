"""The loaded versions of ``mmadapt serve``: each version folder loaded once, each with one worker.

A :class:`Loaded` version runs its predictions in its own worker thread (a model is not shared
between threads mid-generation), the requests that wait together batched into one predictor call,
and holds at most ``max_queue`` requests waiting
behind the running one: one more is refused (:class:`QueueFull`, HTTP 429) instead of queueing
without bound. The :class:`Pool` is a small cache keyed by version folder: a version is loaded
once (concurrent requests for it wait for the one load), and when more than ``cache_size``
versions are loaded the least recently used one that is neither kept (current, or in a split)
nor busy is dropped. Versions on the same base model share one loaded base, their adapters loaded
into it as named adapters (:mod:`mmadapt.engine.shared`); a dropped version's adapter stays in the
base until the server stops.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mmadapt.engine.runner import LoadedArtifact, load_artifact


class QueueFull(Exception):
    """The version's queue holds ``max_queue`` waiting requests already."""


class Evicted(Exception):
    """The version was dropped from the cache between routing and submitting (get it again)."""


class Loaded:
    """One loaded version: its artifact, its worker thread and its bounded queue.

    The worker batches: it takes every request waiting when it is free (up to ``max_batch``
    inputs) and runs them through the predictor in one call (the text predictor pads them into
    one generation batch; speech windows and image prompts batch the same way), then hands each
    request its own predictions. A batch that fails is retried request by request, so one bad
    input fails only its own request.
    """

    def __init__(self, version_dir: Path, artifact: LoadedArtifact, max_queue: int, max_batch: int = 16):
        self.version_dir = version_dir
        self.recipe = version_dir.parent.name
        self.version = version_dir.name
        self.label = f"{self.recipe}@{self.version}"
        self.artifact = artifact
        self.modality = artifact.modality
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.in_flight = 0  # the running predictions and those waiting for the worker
        self.closed = False
        self.last_used = time.monotonic()
        self.batches: list[int] = []  # requests per predictor call, most recent last (bounded)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[tuple[list[Any], Future]] = deque()
        self._worker = threading.Thread(target=self._work, name=f"mmadapt-{self.label}", daemon=True)
        self._worker.start()

    def submit(self, inputs: list[Any]) -> asyncio.Future:
        """Queue a prediction; an awaitable of its list of Predictions. Raises QueueFull or Evicted."""
        with self._lock:
            if self.closed:
                raise Evicted(self.label)
            if self.in_flight > self.max_queue:
                raise QueueFull(self.label)
            self.in_flight += 1
            self.last_used = time.monotonic()
            future: Future = Future()
            self._waiting.append((list(inputs), future))
            self._wake.notify()
        return asyncio.wrap_future(future)

    def _next_batch(self) -> list[tuple[list[Any], Future]] | None:
        with self._wake:
            while not self._waiting and not self.closed:
                self._wake.wait()
            if not self._waiting:  # closed, and everything queued has been answered
                return None
            batch, size = [], 0
            while self._waiting and (not batch or size + len(self._waiting[0][0]) <= self.max_batch):
                item = self._waiting.popleft()
                batch.append(item)
                size += len(item[0])
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [(inputs, future) for inputs, future in batch if future.set_running_or_notify_cancel()]
            results: list[tuple[Future, Any, bool]] = []  # (future, predictions or exception, ok)
            try:
                flat = self.artifact.predictor.predict([x for inputs, _ in live for x in inputs]) if live else []
                start = 0
                for inputs, future in live:
                    results.append((future, list(flat[start:start + len(inputs)]), True))
                    start += len(inputs)
            except BaseException as exc:  # noqa: BLE001 - handed to the request(s); the worker goes on
                if len(live) == 1:
                    results = [(live[0][1], exc, False)]
                else:  # one request's bad input must not fail the others: each again, alone
                    results = []
                    for inputs, future in live:
                        try:
                            results.append((future, self.artifact.predictor.predict(inputs), True))
                        except BaseException as single:  # noqa: BLE001
                            results.append((future, single, False))
            with self._lock:  # counted out before the answers go: a caller that awaits one sees it done
                self.in_flight -= len(batch)
                self.batches = [*self.batches[-999:], len(live)]
            for future, value, ok in results:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def close_if_idle(self) -> bool:
        with self._lock:
            if self.in_flight:
                return False
            self.closed = True
            self._wake.notify_all()
        return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._wake.notify_all()
        self._worker.join()  # in-flight predictions finish


class Pool:
    """Loaded versions keyed by version folder (a small LRU cache)."""

    def __init__(self, *, max_queue: int = 8, cache_size: int = 4, max_batch: int = 16, share_base: bool = True,
                 loader: Callable[[Path], LoadedArtifact] | None = None):
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.bases: dict[tuple, Any] = {}  # loaded base models shared by versions (engine/shared.py)
        self.loader = loader or (functools.partial(load_artifact, bases=self.bases) if share_base else load_artifact)
        self._load_lock = threading.Lock()  # one load at a time: a version composes onto a shared base alone
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
            with self._load_lock:
                artifact = self.loader(key)
            loaded = Loaded(Path(version_dir), artifact, self.max_queue, self.max_batch)
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

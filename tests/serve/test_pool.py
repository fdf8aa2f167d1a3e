"""The cache of loaded versions: each version loaded once (even when asked for by many threads at
once), the least recently used idle version dropped past the cache size, never a kept or busy one."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmadapt.protocols import Prediction
from mmadapt.serve.pool import Evicted, Pool, QueueFull


class Echo:
    def __init__(self):
        self.release = threading.Event()
        self.release.set()

    def predict(self, inputs, *, progress=False):
        assert self.release.wait(10)
        return [Prediction(x) for x in inputs]


def fake_loader(calls: list):
    def load(folder: Path):
        calls.append(folder.name)
        time.sleep(0.05)  # a load takes a while: concurrent askers must wait for the one load
        return SimpleNamespace(modality=None, predictor=Echo())

    return load


def test_each_version_is_loaded_once_however_many_ask_at_once(tmp_path):
    calls: list[str] = []
    pool = Pool(loader=fake_loader(calls))
    with ThreadPoolExecutor(8) as threads:
        loaded = list(threads.map(lambda _: pool.get(tmp_path / "r" / "v0001"), range(16)))
    assert calls == ["v0001"] and len({id(x) for x in loaded}) == 1 and pool.loads == 1
    assert loaded[0].label == "r@v0001"


def test_the_least_recently_used_idle_version_is_dropped_never_a_kept_or_busy_one(tmp_path):
    calls: list[str] = []
    pool = Pool(cache_size=2, loader=fake_loader(calls))
    v1, v2, v3, v4 = (tmp_path / "r" / f"v000{i}" for i in range(1, 5))
    pool.keep([v1])
    pool.get(v1), pool.get(v2)
    busy = pool.get(v2)
    busy.artifact.predictor.release.clear()

    async def hold():
        future = busy.submit(["x"])
        await asyncio.sleep(0.1)
        pool.get(v3)  # over the size: v2 is busy, v1 kept -> nothing can go yet
        assert set(pool.labels()) == {"r@v0001", "r@v0002", "r@v0003"}
        busy.artifact.predictor.release.set()
        return await future

    assert [p.output for p in asyncio.run(hold())] == ["x"]
    pool.get(v4)  # now v2 (least recently used, idle) and v3 go
    assert set(pool.labels()) == {"r@v0001", "r@v0004"}
    with pytest.raises(Evicted):
        asyncio.run(_submit(busy))
    assert calls == ["v0001", "v0002", "v0003", "v0004"]


async def _submit(loaded):
    return await loaded.submit(["y"])


def test_the_queue_bound_counts_the_running_and_the_waiting(tmp_path):
    pool = Pool(max_queue=1, loader=fake_loader([]))
    loaded = pool.get(tmp_path / "r" / "v0001")
    loaded.artifact.predictor.release.clear()

    async def three():
        first, second = loaded.submit(["a"]), loaded.submit(["b"])
        with pytest.raises(QueueFull):
            loaded.submit(["c"])
        loaded.artifact.predictor.release.set()
        return [p.output for r in await asyncio.gather(first, second) for p in r]

    assert asyncio.run(three()) == ["a", "b"] and loaded.in_flight == 0
    pool.close()


class Picky(Echo):
    """Echo that records each call's inputs and refuses the input 'bad'."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def predict(self, inputs, *, progress=False):
        self.calls.append(list(inputs))
        out = super().predict(inputs)
        if "bad" in inputs:
            raise ValueError("bad input")
        return out


def test_requests_waiting_together_run_as_one_batch_and_a_bad_one_fails_alone(tmp_path):
    pool = Pool(max_queue=8, max_batch=4, loader=lambda folder: SimpleNamespace(modality=None, predictor=Picky()))
    loaded = pool.get(tmp_path / "r" / "v0001")
    picky = loaded.artifact.predictor
    picky.release.clear()

    async def many():
        first = loaded.submit(["a"])  # runs alone; the next ones wait behind it
        await asyncio.sleep(0.1)
        rest = [loaded.submit([w]) for w in ("b", "bad", "c", "d", "e")]
        picky.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(many())
    assert [r[0].output if isinstance(r, list) else type(r).__name__ for r in results] == ["a", "b", "ValueError", "c", "d", "e"]
    # a alone; b, bad, c, d batched (max_batch 4) and, failing, retried one by one; then e
    assert picky.calls == [["a"], ["b", "bad", "c", "d"], ["b"], ["bad"], ["c"], ["d"], ["e"]]
    assert loaded.batches == [1, 4, 1] and loaded.in_flight == 0
    pool.close()

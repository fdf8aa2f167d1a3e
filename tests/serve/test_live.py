"""Against a real uvicorn server: the bounded queue (429), promote / rollback while serving (the new
version answers within 2 s, no request fails, an in-flight request finishes on its version), each
version loaded once, and whole log lines under concurrent requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mmadapt.engine.atomic import read_json_lines as read_lines
from mmadapt.govern.registry import promote, rollback
from mmadapt.recipe import load_recipe
from mmadapt.serve.app import create_app
from tests.serve.conftest import LiveServer, chat, wait_for


class Gate:
    """A predictor that waits for ``release`` before answering (a slow model, on demand)."""

    def __init__(self, inner):
        self.inner, self.release, self.entered = inner, threading.Event(), threading.Event()
        self.only: str | None = None  # hold only requests for this input (None: all)

    def predict(self, inputs, *, progress=False):
        if self.only is None or self.only in inputs:
            self.entered.set()
            assert self.release.wait(30)
        return self.inner.predict(inputs, progress=progress)


def _gate(app, version_dir) -> Gate:
    loaded = app.state.pool.cached(version_dir)
    gate = Gate(loaded.artifact.predictor)
    loaded.artifact.predictor = gate
    return gate


def test_a_full_queue_is_429_and_the_queued_requests_still_answer(spell_runs):
    app = create_app([spell_runs["rdir"]], max_queue=1)
    gate = _gate(app, spell_runs["rdir"] / "v0002")
    loaded = app.state.pool.cached(spell_runs["rdir"] / "v0002")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/chat/completions", json=chat("zeta"))
        assert gate.entered.wait(10)
        waiting = pool.submit(client.post, "/v1/chat/completions", json=chat("kappa"))
        assert wait_for(lambda: loaded.in_flight == 2)
        refused = client.post("/v1/chat/completions", json=chat("iota"))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.headers["x-mmadapt-version"] == "spell@v0002"
        gate.release.set()
        assert running.result().status_code == 200 and waiting.result().json()["choices"][0]["message"]["content"] == "kappa!"
    statuses = sorted(line["status"] for line in read_lines(spell_runs["rdir"] / "serve" / "requests.jsonl"))
    assert statuses == [200, 200, 429]


@pytest.mark.slow  # ~3 s of polling
def test_rollback_and_promote_while_serving_switch_within_2s_with_no_failed_request(spell_runs):
    rdir = spell_runs["rdir"]
    app = create_app([rdir])
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v1/chat/completions", json=chat("zeta", model="spell"))
                results.append((r.status_code, r.headers.get("x-mmadapt-version")))

    def served_by(version: str) -> bool:
        return bool(results) and results[-1][1] == version

    with LiveServer(app) as server, ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(hammer) for _ in range(2)]
        assert wait_for(lambda: served_by("spell@v0002"))
        started = time.monotonic()
        rollback(rdir, reason="test")  # under load
        assert wait_for(lambda: served_by("spell@v0001"), timeout=2.0)
        assert time.monotonic() - started < 2.0

        gate = _gate(app, rdir / "v0001")  # now hold one request in flight on v0001 across a promotion
        gate.only = "kappa"
        held = pool.submit(httpx.post, f"{server.url}/v1/chat/completions", json=chat("kappa"), timeout=30)
        assert gate.entered.wait(10)
        started = time.monotonic()
        promote(rdir, "v0002", load_recipe(spell_runs["recipe"]), reason="test")
        assert wait_for(lambda: app.state.router.current["spell"].name == "v0002", timeout=2.0)
        gate.release.set()
        assert wait_for(lambda: served_by("spell@v0002"), timeout=2.0 - (time.monotonic() - started) + 0.2)
        assert time.monotonic() - started < 2.2
        answer = held.result()
        assert answer.status_code == 200 and answer.headers["x-mmadapt-version"] == "spell@v0001"  # finished where it started
        assert answer.json()["choices"][0]["message"]["content"] == "kappa"
        time.sleep(0.2)
        stop.set()
        for worker in workers:
            worker.result()
    assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:5]
    assert {version for _, version in results} == {"spell@v0001", "spell@v0002"}
    assert app.state.pool.loads == 2  # v0002 at start, v0001 at the rollback; the promotion found v0002 cached
    assert [(a, b) for _, a, b in app.state.router.switches] == [(None, "v0002"), ("v0002", "v0001"), ("v0001", "v0002")]


def test_concurrent_requests_leave_whole_log_lines(spell_runs):
    rdir = spell_runs["rdir"]
    app = create_app([rdir], max_queue=64)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        words = [f"w{i:03d}" + "x" * (i * 37 % 300) for i in range(48)]
        responses = list(pool.map(lambda w: client.post("/v1/chat/completions", json=chat(w, user=w[:4])), words))
    assert all(r.status_code == 200 for r in responses)
    raw = (rdir / "serve" / "requests.jsonl").read_bytes()
    lines = read_lines(rdir / "serve" / "requests.jsonl")
    assert raw.endswith(b"\n") and len(raw.splitlines()) == len(lines) == 48
    assert {line["id"] for line in lines} == {r.json()["id"] for r in responses}
    assert all(line["output"] == [line["input"]["messages"][0]["content"] + "!"] for line in lines)


def test_a_stopping_server_lets_the_running_request_finish(spell_runs):
    app = create_app([spell_runs["rdir"]])
    gate = _gate(app, spell_runs["rdir"] / "v0002")
    with ThreadPoolExecutor(1) as pool:
        server = LiveServer(app).__enter__()
        running = pool.submit(httpx.post, f"{server.url}/v1/chat/completions", json=chat("zeta"), timeout=30)
        assert gate.entered.wait(10)
        server.server.should_exit = True  # what SIGTERM / Ctrl-C set
        time.sleep(0.3)
        assert server.thread.is_alive()  # still waiting for the request
        gate.release.set()
        assert running.result().status_code == 200
        server.thread.join(timeout=20)
        assert not server.thread.is_alive()

"""SIGKILL of a serving process under load (toy 'spell' modality in a subprocess server, 8 clients):
every line of requests.jsonl is one whole JSON object (none torn, none merged), every answer a client
received is in the log, and a restarted server serves the same versions and appends whole lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serve.conftest import ROOT, chat, free_port

SERVER = """
import sys
from mmadapt.protocols import register_modality
from tests.fixtures.toy_modality import SpellModality
register_modality("spell", SpellModality)
from mmadapt.serve.app import create_app, run_server
app = create_app([sys.argv[1]], split={"spell": {"v0001": 50, "v0002": 50}}, max_queue=64)
run_server(app, port=int(sys.argv[2]))
"""


def _start(rdir, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(rdir), str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def _served(port: int) -> dict:
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
    return {m["id"]: m["mmadapt"] for m in models if "@" not in m["id"]}


@pytest.mark.slow  # two server processes (~15 s)
def test_sigkill_under_load_leaves_whole_lines_and_a_restart_serves_the_same_versions(spell_runs):
    rdir = spell_runs["rdir"]
    port = free_port()
    proc = _start(rdir, port)
    before = _served(port)
    answered: list[tuple[str, str]] = []  # (request id, version) of every 200 a client got
    lock, stop = threading.Lock(), threading.Event()

    def client(c: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = http.post("/v1/chat/completions", json=chat(f"word{c}x{n}", user=f"u{c}-{n}"))
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        answered.append((r.json()["id"], r.headers["x-mmadapt-version"]))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests in flight, lines being written
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert len(answered) >= 150

    raw = (rdir / "serve" / "requests.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""  # the file ends with a whole line
    entries = [json.loads(line) for line in lines[:-1]]  # each line parses alone: none torn, none merged
    assert all(isinstance(e, dict) and e["id"].startswith("req-") and e["version"] in ("v0001", "v0002") for e in entries)
    assert len({e["id"] for e in entries}) == len(entries)
    logged = {e["id"]: e["version"] for e in entries}
    assert all(logged.get(rid) == label.partition("@")[2] for rid, label in answered)  # logged before it was answered

    proc = _start(rdir, port)  # the restart
    try:
        assert _served(port) == before  # the same current version and split
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("zeta", user="after"), timeout=10)
        assert r.status_code == 200 and r.headers["x-mmadapt-version"].partition("@")[2] in ("v0001", "v0002")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    after = (rdir / "serve" / "requests.jsonl").read_text().splitlines()
    assert len(after) == len(entries) + 1 and json.loads(after[-1])["id"] == r.json()["id"]

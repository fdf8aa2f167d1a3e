"""Load test of `mmadapt serve` on loopback: a 50/50 split under 16 clients, batching against one at a
time, and a `registry rollback` in the middle of traffic.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/serve_load.py [--model embedded:smollm2-135m-instruct]

Builds two versions of a Zentrix support recipe (the shipped data, the prompt strategy with two
system prompts: v0001 and v0002; --max-new-tokens tokens per answer), then, each phase against a
fresh `mmadapt serve` subprocess on 127.0.0.1:

1. split: ``--split NAME=v0001:50,v0002:50``; --clients threads send --requests chat requests in
   all, each with its own user; prints errors, each version's share, p50/p95 latency and throughput.
2. one at a time: one client, --sequential requests, same server: its throughput; the ratio
   batched (phase 1) / one at a time.
3. rollback: no split, current v0002; the clients send requests; once half of --requests have
   answered, ``mmadapt registry rollback NAME`` (the CLI, another process) moves current to v0001;
   the clients go on until --requests have answered and 4 s have passed since. Prints errors,
   how long after the rollback the first v0001 answer came, and how many requests started 2 s
   or more after the rollback were answered by another version (must be 0).

Bounded: every phase stops at --max-seconds, and the script exits 1 when any check fails
(errors, shares outside 45-55 %, a late answer of the old version).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "zentrix-support"
NAME = "zentrix-load"
SYSTEMS = ("You are the Zentrix support assistant. Answer in one short sentence.",
           "You are the Zentrix support assistant. Answer briefly and name the command to run.")


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmadapt.cli", *args], cwd=ROOT, check=True, **kw)


def build(folder: Path, model: str, max_new_tokens: int) -> Path:
    """Two versions (v0001, v0002) of the recipe; returns the runs folder. ``model`` "tiny": a tiny
    random Llama built here (tests/fixtures/tiny.py: the serving path without the model's cost)."""
    runs = folder / "runs"
    if model == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.fixtures.tiny import tiny_causal_lm

        model = str(tiny_causal_lm(folder / "tiny-lm"))
    recipe = folder / f"{NAME}.yaml"
    recipe.write_text(json.dumps({
        "name": NAME, "modality": "text", "base_model": model,
        "data": {"train": str(DATA / "train.jsonl"), "eval": str(DATA / "eval.jsonl")},
        "strategies": {"prompt": {"system": SYSTEMS[0]}}, "inference": {"max_new_tokens": max_new_tokens, "batch_size": 16},
        "eval": {"limit": 4, "bootstrap": 10, "latency_samples": 1}, "output_dir": str(runs)}))
    for system in SYSTEMS:
        cli("run", str(recipe), "--quiet", "--set", f"strategies.prompt.system={json.dumps(system)}", stdout=subprocess.DEVNULL)
    return runs


class Server:
    """`mmadapt serve` in a subprocess on a free loopback port."""

    def __init__(self, runs: Path, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "mmadapt.cli", "serve", NAME, "--output-dir", str(runs),
                                      "--port", str(self.port), "--max-queue", "64", *extra],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("the server did not start in 180 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(url: str, clients: int, total: int, *, questions: list[str], max_seconds: float, until=None,
         answered: list[int] | None = None) -> list[dict]:
    """``clients`` threads send requests until ``total`` have been sent (and ``until()`` is true, when
    given); ``answered[0]`` counts the answers as they come."""
    results: list[dict] = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.monotonic() + max_seconds

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if sent[0] >= total and (until is None or until()):
                        return
                    n = sent[0]
                    sent[0] += 1
                body = {"model": NAME, "user": f"user-{n}", "messages": [{"role": "user", "content": questions[n % len(questions)]}]}
                start = time.monotonic()
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    row = {"start": start, "end": time.monotonic(), "status": r.status_code,
                           "version": r.headers.get("x-mmadapt-version", "").partition("@")[2]}
                except httpx.HTTPError as exc:
                    row = {"start": start, "end": time.monotonic(), "status": type(exc).__name__, "version": None}
                with lock:
                    results.append(row)
                    if answered is not None:
                        answered[0] = len(results)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == 200]
    lat = sorted((r["end"] - r["start"]) * 1000 for r in ok)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    shares = {v: sum(r["version"] == v for r in ok) / max(len(ok), 1) for v in sorted({r["version"] for r in ok})}
    return {"requests": len(results), "errors": len(results) - len(ok), "p50_ms": statistics.median(lat) if lat else None,
            "p95_ms": lat[int(0.95 * (len(lat) - 1))] if lat else None, "per_second": len(ok) / span if span else 0.0,
            "shares": shares}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct", help='a base model reference, or "tiny"')
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--sequential", type=int, default=32, help="requests of the one-at-a-time phase")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=300, help="each phase stops here whatever it has sent")
    ap.add_argument("--runs", type=Path, default=None, help="reuse runs built before (with v0001, v0002)")
    args = ap.parse_args()
    questions = [json.loads(line)["question"] for line in (DATA / "eval.jsonl").read_text().splitlines()]
    failures = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        start = time.perf_counter()
        runs = args.runs or build(Path(tmp), args.model, args.max_new_tokens)
        print(f"built v0001, v0002 of {NAME} ({args.model}, {args.max_new_tokens} new tokens) in {time.perf_counter() - start:.0f} s")

        cli("registry", "rollback", NAME, "--output-dir", str(runs), "--to", "v0002", stdout=subprocess.DEVNULL)  # current: v0002
        with Server(runs, "--split", f"{NAME}=v0001:50,v0002:50") as server:
            split = summary(load(server.url, args.clients, args.requests, questions=questions, max_seconds=args.max_seconds))
            one = summary(load(server.url, 1, args.sequential, questions=questions, max_seconds=args.max_seconds))
        print(f"\n1. split 50/50, {args.clients} clients, {split['requests']} requests: errors {split['errors']}, "
              + ", ".join(f"{v} {100 * s:.1f} %" for v, s in split["shares"].items())
              + f"; latency p50 {split['p50_ms']:.0f} ms, p95 {split['p95_ms']:.0f} ms; {split['per_second']:.2f} requests/s")
        ratio = split["per_second"] / one["per_second"] if one["per_second"] else float("nan")
        print(f"2. one at a time, 1 client, {one['requests']} requests: errors {one['errors']}; latency p50 {one['p50_ms']:.0f} ms, "
              f"p95 {one['p95_ms']:.0f} ms; {one['per_second']:.2f} requests/s -> batched / one at a time = {ratio:.2f}x")
        if split["errors"] or one["errors"]:
            failures.append("errors under the split")
        if split["requests"] < args.requests or any(not 0.45 <= s <= 0.55 for s in split["shares"].values()) or len(split["shares"]) != 2:
            failures.append("a version's share is outside 45-55 %")
        if not ratio >= 2.0:
            failures.append(f"batched throughput is {ratio:.2f}x one at a time (< 2x)")

        rolled = {}
        answered = [0]

        def roll() -> None:  # after half the requests have answered: the CLI, in another process
            deadline = time.monotonic() + args.max_seconds
            while answered[0] < args.requests // 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            rolled["asked"] = time.monotonic()
            cli("registry", "rollback", NAME, "--output-dir", str(runs), "--to", "v0001", "--reason", "load test",
                stdout=subprocess.DEVNULL)
            rolled["done"] = time.monotonic()

        with Server(runs) as server:
            roller = threading.Thread(target=roll)
            roller.start()
            results = load(server.url, args.clients, args.requests, questions=questions, max_seconds=args.max_seconds,
                           until=lambda: "done" in rolled and time.monotonic() > rolled["done"] + 4, answered=answered)
            roller.join()
        stats = summary(results)
        done = rolled["done"]
        late = [r for r in results if r["start"] >= done + 2.0 and r["version"] != "v0001"]
        first_new = min((r["end"] for r in results if r["version"] == "v0001" and r["start"] >= rolled["asked"]), default=None)
        after = [r for r in results if r["start"] >= done + 2.0]
        print(f"3. rollback v0002 -> v0001 after {args.requests // 2} answers ({args.clients} clients, {stats['requests']} requests): "
              f"errors {stats['errors']}; the CLI took {done - rolled['asked']:.2f} s; first v0001 answer "
              + (f"{first_new - done:+.2f} s after it returned" if first_new else "never")
              + f"; {len(after)} requests started >= 2 s after the rollback, {len(late)} of them answered by another version")
        if stats["errors"]:
            failures.append("errors during the rollback")
        if late or not after:
            failures.append("the rollback was not answered within 2 s")
    print("\nall checks passed" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    sys.exit(main())

"""`mmadapt compare --parallel N` against the sequential compare of the same recipe, one after the other.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/compare_parallel.py [RECIPE] [--parallel 2]

Runs the compare twice through the CLI (fresh output folders, the same seeds): sequentially, then
with ``--parallel N``; prints each wall time, the ratio parallel / sequential, and whether the two
report.json tables hold the same figures (every metric and its CI, row by row). Default recipe:
the shipped image recipe (six stacks, ~5 min sequentially on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COSTS = {"train_seconds", "latency_p50_ms", "latency_p95_ms", "peak_rss_mib", "version", "samples"}


def run(recipe: Path, out: Path, parallel: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "mmadapt.cli", "compare", str(recipe), "--quiet", "--set", f"output_dir={out}"]
    if parallel > 1:
        cmd += ["--parallel", str(parallel)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    seconds = time.perf_counter() - start
    (report,) = out.glob("*/compare/*/report.json")
    return seconds, json.loads(report.read_text())


def figures(report: dict) -> list[dict]:
    """Each row's quality figures (metrics, CIs, paired tests, rank): what must not depend on --parallel."""
    return [{k: v for k, v in row.items() if k not in COSTS} for row in report["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes/image/brand-style.yaml"))
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmadapt-bench-") as tmp:
        seq_s, seq = run(Path(args.recipe), Path(tmp) / "sequential", 1)
        par_s, par = run(Path(args.recipe), Path(tmp) / "parallel", args.parallel)
    same = figures(seq) == figures(par)
    print(f"recipe {args.recipe}: {len(seq['rows'])} stacks")
    print(f"sequential compare:       {seq_s:7.1f} s")
    print(f"compare --parallel {args.parallel}:     {par_s:7.1f} s")
    print(f"ratio parallel/sequential: {par_s / seq_s:.2f}")
    print(f"same figures in both reports: {same}")
    if not same:
        for a, b in zip(figures(seq), figures(par)):
            if a != b:
                print("  differs:", a.get("stack"), {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)})
        sys.exit(1)


if __name__ == "__main__":
    main()

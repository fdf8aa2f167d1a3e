"""Peak memory of `mmadapt serve`'s shared backbone: three LoRA versions of a Zentrix recipe served
together against one version, and against the three loaded each with its own base.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/serve_memory.py [--model embedded:smollm2-135m-instruct]

Trains three LoRA versions (prompt + adapter r=16 on all linear layers, the shipped Zentrix data,
three seeds; --steps steps each: the adapter's size does not depend on them), then, each in a fresh
process: loads the versions into a serve Pool and answers one question with each; prints the
process's peak RSS (ru_maxrss) for one version, three shared, and three unshared, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "zentrix-support"
NAME = "zentrix-lora"

MEASURE = """
import asyncio, json, resource, sys
import torch
torch.set_num_threads(1)
from mmadapt.serve.pool import Pool
dirs, share = json.loads(sys.argv[1]), sys.argv[2] == "shared"
pool = Pool(share_base=share)
loaded = [pool.get(d) for d in dirs]
async def ask():
    return [(await x.submit(["Which port does the Zentrix gateway listen on?"]))[0].output for x in loaded]
answers = asyncio.run(ask())
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "bases": len(pool.bases),
                  "answers": answers}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs here (a second call reuses them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-memory-") as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        runs = tmp / "runs"
        recipe = tmp / f"{NAME}.yaml"
        recipe.write_text(json.dumps({
            "name": NAME, "modality": "text", "base_model": args.model,
            "data": {"train": str(DATA / "train.jsonl"), "eval": str(DATA / "eval.jsonl")},
            "strategies": {"prompt": {"system": "You are the Zentrix support assistant. Answer in one short sentence."},
                           "adapter": {"method": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}},
            "train": {"steps": args.steps, "lr": 2.0e-3, "batch_size": 4, "seed": 0},
            "inference": {"max_new_tokens": 8, "batch_size": 4},
            "eval": {"limit": 2, "bootstrap": 10, "latency_samples": 1}, "output_dir": str(runs)}))
        for seed in (0, 1, 2)[len(list((runs / NAME).glob("v0*"))):]:
            subprocess.run([sys.executable, "-m", "mmadapt.cli", "run", str(recipe), "--quiet", "--set", f"train.seed={seed}"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        dirs = [str(runs / NAME / v) for v in ("v0001", "v0002", "v0003")]

        def measure(which: list[str], how: str) -> dict:
            out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(which), how], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        one = measure(dirs[:1], "shared")
        shared = measure(dirs, "shared")
        apart = measure(dirs, "unshared")
    print(f"{args.model}, three LoRA versions (r=16, all-linear), each answering one question:")
    print(f"  one version:              peak RSS {one['peak_rss_mib']:7.1f} MiB")
    print(f"  three, one shared base:   peak RSS {shared['peak_rss_mib']:7.1f} MiB ({shared['bases']} base) "
          f"-> {shared['peak_rss_mib'] / one['peak_rss_mib']:.2f}x one version")
    print(f"  three, a base each:       peak RSS {apart['peak_rss_mib']:7.1f} MiB "
          f"-> {apart['peak_rss_mib'] / one['peak_rss_mib']:.2f}x one version")
    ok = shared["peak_rss_mib"] <= 1.3 * one["peak_rss_mib"]
    print("shared <= 1.3x one version: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

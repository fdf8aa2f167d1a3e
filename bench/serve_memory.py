"""Peak memory of `mmadapt serve`'s shared backbone: three LoRA versions served together against one
version, and against the three loaded each with its own base.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/serve_memory.py [--model embedded:smollm2-135m-instruct]
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/serve_memory.py --modality image [--model embedded:shapes-diffusion]

Trains three LoRA versions (three seeds; --steps steps each: the adapter's size does not depend on
them) — text: prompt + adapter r=16 on all linear layers, the shipped Zentrix data; image: prompt +
the brand-style recipe's LoRA (r=16 on the UNet's linear and conv layers), the shipped brand
references — then, each in a fresh process: loads the versions into a serve Pool and answers one
request with each; prints the process's peak RSS (ru_maxrss) for one version, three shared, and three
unshared, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZENTRIX = ROOT / "datasets" / "zentrix-support"
BRAND = ROOT / "datasets" / "brand-style"
DEFAULT_MODEL = {"text": "embedded:smollm2-135m-instruct", "image": "embedded:shapes-diffusion"}
REQUEST = {"text": "Which port does the Zentrix gateway listen on?", "image": "two circles in a row"}

MEASURE = """
import asyncio, json, resource, sys
import torch
torch.set_num_threads(1)
from mmadapt.serve.pool import Pool
dirs, share, request = json.loads(sys.argv[1]), sys.argv[2] == "shared", sys.argv[3]
pool = Pool(share_base=share)
loaded = [pool.get(d) for d in dirs]
async def ask():
    return [(await x.submit([request]))[0].output for x in loaded]
answers = [a if isinstance(a, str) else f"{type(a).__name__} {getattr(a, 'size', '')}" for a in asyncio.run(ask())]
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "bases": len(pool.bases),
                  "answers": answers}))
"""


def recipe_for(modality: str, model: str, steps: int, runs: Path) -> dict:
    """The LoRA recipe whose three versions are measured."""
    common = {"modality": modality, "base_model": model, "output_dir": str(runs),
              "eval": {"limit": 2, "bootstrap": 10, "latency_samples": 1}}
    if modality == "text":
        return {**common, "name": "zentrix-lora",
                "data": {"train": str(ZENTRIX / "train.jsonl"), "eval": str(ZENTRIX / "eval.jsonl")},
                "strategies": {"prompt": {"system": "You are the Zentrix support assistant. Answer in one short sentence."},
                               "adapter": {"method": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}},
                "train": {"steps": steps, "lr": 2.0e-3, "batch_size": 4, "seed": 0},
                "inference": {"max_new_tokens": 8, "batch_size": 4}}
    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_in", "conv_out", "conv_shortcut",
               "time_emb_proj", "proj_in", "proj_out", "proj", "net.2", "conv"]  # as recipes/image/brand-style.yaml
    return {**common, "name": "brand-lora",
            "data": {"references": str(BRAND / "images"), "captions": str(BRAND / "captions.jsonl"),
                     "palette": str(BRAND / "palette.json"), "eval": str(BRAND / "prompts.jsonl")},
            "strategies": {"prompt": {"template": "{prompt}, zentrix style"},
                           "adapter": {"r": 16, "alpha": 16, "target_modules": targets, "auto_caption": "zentrix style"}},
            "train": {"steps": steps, "lr": 3.0e-3, "batch_size": 4, "seed": 0},
            "inference": {"steps": 10, "batch_size": 2},
            "eval": {**common["eval"], "metrics": ["palette_adherence"]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=sorted(DEFAULT_MODEL), default="text")
    ap.add_argument("--model", default=None, help="the base model (default: the modality's embedded one)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs here (a second call reuses them)")
    args = ap.parse_args()
    model = args.model or DEFAULT_MODEL[args.modality]
    with tempfile.TemporaryDirectory(prefix="serve-memory-") as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        runs = tmp / "runs"
        raw = recipe_for(args.modality, model, args.steps, runs)
        name = raw["name"]
        recipe = tmp / f"{name}.yaml"
        recipe.write_text(json.dumps(raw))
        for seed in (0, 1, 2)[len(list((runs / name).glob("v0*"))):]:
            subprocess.run([sys.executable, "-m", "mmadapt.cli", "run", str(recipe), "--quiet", "--set", f"train.seed={seed}"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        dirs = [str(runs / name / v) for v in ("v0001", "v0002", "v0003")]

        def measure(which: list[str], how: str) -> dict:
            out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(which), how, REQUEST[args.modality]], cwd=ROOT,
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        one = measure(dirs[:1], "shared")
        shared = measure(dirs, "shared")
        apart = measure(dirs, "unshared")
    print(f"{model}, three LoRA versions (r=16), each answering one request:")
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

"""LoRA training on the tiny random SDXL: steps/s and memory with and without cached embeddings,
``model.dtype: bf16`` (frozen parts), ``train.precision: bf16`` (autocast) and gradient checkpointing.

The pipeline is ``tests/fixtures/tiny.py:tiny_sdxl_pipeline`` (two 1-layer CLIPs, a small UNet with
SDXL's text-time embedding, a 2-block VAE: an image of S px is an S/2 latent), built once in a temp
folder; the references are the 24 of ``datasets/brand-style`` with their captions at ``--size`` px.
Each setting is one fresh process (so its memory is its own) that loads the stack
(``ImageModality.new_stack``) and runs the adapter strategy's ``fit`` (LoRA r 4, batch 4, ``--steps``
steps, one torch thread) with no evaluation. The settings run one after another in rounds
(A B C ... A B C ...), so each setting's steps/s is its median over rounds taken side by side with the
others; ratios are to the fp32 row.

Per setting it prints:
* steps/s (wall): optimizer steps over the loop's seconds (the FitReport's ``train_seconds``; with cached
  embeddings the one-time encoding is before the loop, without them the VAE and text encoders run in it);
* steps per CPU-s: steps over the CPU seconds of the thread that runs ``fit`` (torch runs one thread),
  one-time encoding and LoRA save included: what a loaded machine does not stretch (the ratio column);
* weights MiB: the bytes of every pipeline module's parameters as loaded (the frozen parts in ``model.dtype``);
* fit peak MiB: the peak resident set size (RSS, ``/proc/self/statm`` sampled every millisecond by a
  thread) during ``fit`` above the RSS just before it: caches, activations, gradients, optimizer state;
* peak RSS MiB: the process's ``ru_maxrss`` (imports, load and fit; mostly the libraries at this size).
RSS is what the kernel counts, so it is valid under CPU load; the allocator may keep freed pages,
so it is an upper bound of what torch held.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/image_train.py [--steps 20] [--rounds 2] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
BRAND = ROOT / "datasets" / "brand-style"

SETTINGS = {
    "fp32": {},
    "fp32 without cached embeddings": {"adapter": {"cache_embeddings": False}},
    "fp32 + gradient checkpointing": {"adapter": {"gradient_checkpointing": True}},
    "model.dtype: bf16 (frozen parts)": {"model": {"dtype": "bf16"}},
    "model.dtype: bf16 without cached embeddings": {"model": {"dtype": "bf16"}, "adapter": {"cache_embeddings": False}},
    "model.dtype: bf16 + checkpointing": {"model": {"dtype": "bf16"}, "adapter": {"gradient_checkpointing": True}},
    "train.precision: bf16 (autocast)": {"train": {"precision": "bf16"}},
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest RSS seen while the block runs (a thread reads /proc/self/statm every millisecond)."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def write_recipe(folder: Path, pipe: Path, size: int, steps: int, setting: dict) -> Path:
    import yaml

    raw = {
        "name": "bench-image-train",
        "modality": "image",
        "base_model": str(pipe),
        "data": {"references": str(BRAND / "images"), "captions": str(BRAND / "captions.jsonl"),
                 "palette": str(BRAND / "palette.json"), "eval": str(BRAND / "prompts.jsonl")},
        "strategies": {"adapter": {"r": 4, "alpha": 4, **setting.get("adapter", {})}},
        "train": {"steps": steps, "lr": 1e-3, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 10_000,
                  **setting.get("train", {})},
        "inference": {"height": size, "width": size},
        "output_dir": str(folder / "runs"),
        **({"model": setting["model"]} if "model" in setting else {}),
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def child(args) -> None:
    """One setting in this process: load, fit, print one JSON line."""
    import torch

    from mmadapt.protocols import FitContext, get_modality
    from mmadapt.recipe import load_recipe

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(write_recipe(Path(tmp), Path(args.pipe), args.size, args.steps, json.loads(args.child)))
        modality = get_modality("image")
        data = modality.load_data(recipe)
        stack = modality.new_stack(recipe)
        modules = [m for m in stack.pipe.components.values() if isinstance(m, torch.nn.Module)]
        weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
        strategy = modality.strategies["adapter"](recipe.strategies["adapter"], recipe)
        (Path(tmp) / "part").mkdir()
        began, cpu = time.perf_counter(), time.thread_time()
        with PeakRSS() as rss:
            report = strategy.fit(stack, data, Path(tmp) / "part", FitContext(recipe=recipe, run_dir=Path(tmp), progress=False))
        print(json.dumps({
            "steps_per_s": report.steps / report.train_seconds,
            "fit_s": time.perf_counter() - began,
            "steps_per_cpu_s": report.steps / (time.thread_time() - cpu),
            "weights_mib": weights / 2**20,
            "fit_peak_mib": (rss.peak - rss.start) / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": report.final_loss,
        }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="reference side in pixels (latents are half)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pipe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tiny import tiny_sdxl_pipeline

    names = [n for n in args.settings.split(",") if n]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    rows: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_sdxl_pipeline(Path(tmp) / "sdxl")
        for r in range(args.rounds):
            for name in names:
                cmd = [sys.executable, __file__, "--child", json.dumps(SETTINGS[name]), "--pipe", str(pipe),
                       "--steps", str(args.steps), "--size", str(args.size)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"{name}: {out.stderr[-2000:]}")
                rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {name}: {rows[name][-1]}", file=sys.stderr)
    base = statistics.median(x["steps_per_cpu_s"] for x in rows[names[0]])
    print(f"tiny SDXL LoRA r4, batch 4, {args.steps} steps, {args.size} px references, one thread; median of {args.rounds} rounds")
    print(f"| setting | steps/s (wall) | steps per CPU-s | x {names[0]} | weights MiB | fit peak MiB | peak RSS MiB | final loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        med = {k: statistics.median(x[k] for x in rows[name]) for k in rows[name][0]}
        print(f"| {name} | {med['steps_per_s']:.2f} | {med['steps_per_cpu_s']:.2f} | {med['steps_per_cpu_s'] / base:.2f} | "
              f"{med['weights_mib']:.2f} | "
              f"{med['fit_peak_mib']:.1f} | {med['peak_rss_mib']:.0f} | {med['final_loss']:.4f} |")


if __name__ == "__main__":
    main()

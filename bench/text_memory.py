"""Peak memory of LoRA training on the embedded SmolLM2: fp32 base vs bf16 base vs gradient checkpointing,
at training sequences of >= 1024 tokens, each run in a fresh process; quality of each against the fp32 run.

Every configuration is the same recipe (recipes/text/hybrid.yaml: prompt + retrieval + LoRA, with
``retrieval.top_k`` raised so that each training input carries enough retrieved passages to pass
1024 tokens) run through ``mmadapt.run`` in its own spawned process (engine.runner.run_in_process),
so the peak resident memory it reports (the manifest's ``costs.peak_rss_mib``: load, training and
evaluation) is that run's alone. Prints, per configuration: peak RSS, its ratio to the fp32 run, the
primary metric with its 95% CI and whether it lies within the fp32 run's CI; and ``mmadapt plan``'s
prediction for the same run (mmadapt.govern.plan) beside the measurement.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/text_memory.py [--steps 12] [--configs fp32,bf16,checkpointing,full]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "fp32": [],
    "bf16": ["model.dtype=bf16"],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "full": ["compare.strategies.full={train: {lr: 2.0e-4}}"],  # the stack becomes prompt+retrieval+full (below)
}


def training_lengths(recipe) -> list[int]:
    """Token lengths of the recipe's training inputs (prompt and retrieved passages fitted as the run does)."""
    from mmadapt.engine.runner import fit_stack
    from mmadapt.modalities.text.tuning import encode_examples
    from mmadapt.protocols import FitContext, get_modality

    modality = get_modality(recipe.modality)
    head = recipe.with_stack([s for s in recipe.stack if s in ("prompt", "retrieval")])
    data = modality.load_data(head)
    stack = modality.new_stack(head)
    with tempfile.TemporaryDirectory() as tmp:

        def part_dir(name: str) -> Path:
            (Path(tmp) / name).mkdir()
            return Path(tmp) / name

        fit_stack(modality, head, stack, data, part_dir, FitContext(recipe=head, run_dir=Path(tmp), progress=False))
        return [len(x) for x, _ in encode_examples(stack, data, recipe.train.max_seq_len)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/text/hybrid.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=8, help="retrieved passages per input (8: every input >= 1024 tokens)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate the first N eval questions (default: all 40)")
    args = parser.parse_args()

    from mmadapt.engine.runner import run_in_process
    from mmadapt.recipe import load_recipe

    common = [
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.micro_batch_size={args.micro_batch_size}",
        "train.max_seq_len=4096", "train.warmup_steps=2", f"strategies.retrieval.top_k={args.top_k}",
        "inference.batch_size=2", "eval.latency_samples=0", *([f"eval.limit={args.eval_limit}"] if args.eval_limit else []),
    ]
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    lengths = training_lengths(load_recipe(args.recipe, common))
    print(
        f"training inputs: {len(lengths)} examples, tokens min {min(lengths)} / mean {statistics.mean(lengths):.0f} / max {max(lengths)}"
        f"; batch {args.batch_size} (micro {args.micro_batch_size}), {args.steps} steps"
    )
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            recipe = load_recipe(args.recipe, [*common, f"output_dir={out}/{name}", *CONFIGS[name]])
            if name == "full":
                recipe = recipe.with_stack([s if s != "adapter" else "full" for s in recipe.stack])
            manifest = run_in_process(recipe, progress=False, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            rows[name] = (recipe, manifest)
            metric = next(iter(manifest["metrics"]))
            low, high = manifest["ci95"][metric]
            print(f"  {name:<14} peak RSS {manifest['costs']['peak_rss_mib']:8.0f} MiB   {metric} {manifest['metrics'][metric]:.3f} "
                  f"[{low:.2f}, {high:.2f}]   train {manifest['costs']['train_seconds']:.0f} s", flush=True)
    if "fp32" not in rows:
        return
    base = rows["fp32"][1]
    metric = next(iter(base["metrics"]))
    low, high = base["ci95"][metric]
    print(f"ratios to the fp32 LoRA run (peak RSS), and {metric} within its CI [{low:.2f}, {high:.2f}]:")
    for name, (recipe, manifest) in rows.items():
        ratio = manifest["costs"]["peak_rss_mib"] / base["costs"]["peak_rss_mib"]
        inside = low <= manifest["metrics"][metric] <= high
        print(f"  {name:<14} {ratio:5.2f}x   {metric} {manifest['metrics'][metric]:.3f} {'within' if inside else 'OUTSIDE'}")
    try:
        from mmadapt.govern.plan import predict_run
    except ImportError:
        return
    print("mmadapt plan's prediction for the same runs (this machine, CPU):")
    for name, (recipe, manifest) in rows.items():
        predicted = predict_run(recipe, seq_len=statistics.mean(lengths)).peak_mib
        measured = manifest["costs"]["peak_rss_mib"]
        print(f"  {name:<14} predicted {predicted:8.0f} MiB   measured {measured:8.0f} MiB   error {predicted / measured - 1:+.0%}")


if __name__ == "__main__":
    main()

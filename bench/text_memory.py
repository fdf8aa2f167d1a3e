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

``--train-only`` measures training alone (no retrieval, no evaluation) on rows of ``--seq-len`` tokens,
each configuration in a fresh process (also ``bf16+checkpointing`` and ``qlora-8bit``), beside ``mmadapt
plan``'s prediction for exactly that setup; it prints the peak RSS and the peak above the process (minus
the RSS just before the model loads: torch, transformers and peft imported), and both ratios to fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmadapt.models.quiet import drop_import_notices  # noqa: E402

drop_import_notices()  # as the CLI does: bitsandbytes' import-time kernel notice (models/quiet.py), here and in each spawned row

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


TRAIN_ONLY = {
    "fp32": {}, "bf16": {"dtype": "bf16"}, "checkpointing": {"checkpointing": True},
    "bf16+checkpointing": {"dtype": "bf16", "checkpointing": True}, "full": {"full": True}, "qlora-8bit": {"quantize": "8bit"},
    "qlora-4bit": {"quantize": "4bit"},
}
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # never used: training rows are token ids


def train_only(config: dict, seq_len: int, steps: int, micro: int, ref: str, r: int = 16) -> dict:
    """One configuration's training alone in this (fresh) process: load SmolLM2, LoRA r16 all-linear (or
    every weight), ``steps`` optimizer steps of ``micro`` sequences of ``seq_len`` tokens (the last 32 the
    answer); ``r`` the LoRA rank; peak RSS of load + training, and of training alone over the RSS after loading."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mmadapt.config import TrainConfig
    from mmadapt.engine import trainer
    from mmadapt.engine.meters import PeakMemory
    from mmadapt.modalities.text.model import load_causal_lm
    from mmadapt.modalities.text.tuning import IGNORE, adapter_autocast_loss, make_collate

    torch.manual_seed(0)
    before = PeakMemory()._proc.memory_info().rss / 2**20  # the process (torch, transformers, peft imported)
    with PeakMemory() as whole:
        model, tokenizer, _ = load_causal_lm(ref, dtype=config.get("dtype", "fp32"), quantize=config.get("quantize", "none"),
                                             fallback_chat_template=PLAIN_TEMPLATE)  # a base model (gemma3-270m) has none
        if config.get("quantize"):
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if config.get("full"):
            for param in model.parameters():
                param.requires_grad_(True)
        else:
            model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
        ids = torch.randint(100, tokenizer.vocab_size, (micro, seq_len)).tolist()
        encoded = [(x, [IGNORE] * (seq_len - 32) + x[-32:]) for x in ids]
        loaded = whole._proc.memory_info().rss / 2**20
        with PeakMemory() as training, tempfile.TemporaryDirectory() as tmp:
            trainer.train(
                model, lengths=[seq_len] * micro, collate=make_collate(encoded, tokenizer.pad_token_id, torch.device("cpu")),
                loss_fn=adapter_autocast_loss(model, config.get("dtype", "fp32"), config.get("quantize", "none")), checkpoint_dir=Path(tmp), progress=False,
                config=TrainConfig(steps=steps, batch_size=micro, warmup_steps=0, checkpoint_every=10**6, max_seq_len=seq_len + 1,
                                   gradient_checkpointing=bool(config.get("checkpointing"))),
            )
    return {"peak": whole.peak_mib, "before": before, "loaded": loaded, "training": training.peak_mib}


def main_train_only(args) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace

    from mmadapt.govern.plan import Setup, load_shape, predict

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    shape = load_shape(args.model)
    print(f"training alone, {args.model}: LoRA r{args.lora_r}, {args.micro_batch_size} sequence(s) of {args.seq_len} tokens, {args.steps} steps, fresh process each")
    rows = {}
    for name in names:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows[name] = pool.submit(train_only, TRAIN_ONLY[name], args.seq_len, args.steps, args.micro_batch_size, args.model, args.lora_r).result()
        conf = TRAIN_ONLY[name]
        method = "full" if conf.get("full") else (f"qlora-{conf['quantize']}" if conf.get("quantize") else "lora")
        setup = Setup(device="cpu", seq_len=args.seq_len, batch=args.micro_batch_size, micro_batch=args.micro_batch_size, r=args.lora_r)
        setup = replace(setup, dtype=conf.get("dtype", "fp32"), checkpointing=bool(conf.get("checkpointing")), method=method)
        predicted = predict(shape, setup).peak_mib
        r = rows[name]
        r["predicted"] = predicted
        print(f"  {name:<19} peak RSS {r['peak']:6.0f} MiB (before load {r['before']:4.0f}, after load {r['loaded']:5.0f};"
              f" above the process {r['peak'] - r['before']:5.0f})   plan predicts {predicted:6.0f} MiB ({predicted / r['peak'] - 1:+.0%})", flush=True)
    if "fp32" in rows:
        ref = rows["fp32"]
        print("ratios to fp32 LoRA: peak RSS, and peak above the process (peak - RSS before the model loads):")
        for name in names:
            r = rows[name]
            print(f"  {name:<19} {r['peak'] / ref['peak']:.2f}   {(r['peak'] - r['before']) / (ref['peak'] - ref['before']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/text/hybrid.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=8, help="retrieved passages per input (8: every input >= 1024 tokens)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate the first N eval questions (default: all 40)")
    parser.add_argument("--train-only", action="store_true", help="measure training alone on synthetic token rows (no retrieval, no eval)")
    parser.add_argument("--seq-len", type=int, default=1024, help="--train-only: tokens per sequence")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="--train-only: the model")
    parser.add_argument("--lora-r", type=int, default=16, help="--train-only: the LoRA rank (alpha = 2r)")
    args = parser.parse_args()
    if args.train_only:
        main_train_only(args)
        return

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
    for name, (_recipe, manifest) in rows.items():
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

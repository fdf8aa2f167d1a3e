"""LoRA training throughput: mmadapt's trainer vs a plain transformers + peft loop and vs transformers'
``Trainer``, side by side in one run.

All three train the same LoRA (same model, same answer-masked examples, same global batch,
same number of optimizer steps, same seed):

* the plain loop is what a user writes from the peft docs: shuffled batches padded to the
  longest, torch's default AdamW;
* ``Trainer`` with peft and ``train_sampling_strategy="group_by_length"`` (transformers 5's ``group_by_length=True``) (what most users run), each batch padded
  to its longest;
* mmadapt's trainer with ``train.packing`` (``--no-packing``: padded, length-grouped rows), whose packed rows
  run on varlen attention (mmadapt/modalities/text/varlen.py: each example attended on its own).

``--dtype bf16``: every side in bf16 as a competent user runs it — the base loaded in bfloat16 (the LoRA
weights stay fp32, peft's default), the plain loop under ``torch.autocast(bfloat16)``, ``Trainer`` with
``bf16=True``, mmadapt through the recipe's ``model.dtype: bf16``.

Tokens/s counts real (non-pad) tokens on every side. Prints the three figures and both ratios, by wall
time and by the process's CPU time (with one thread the latter is less sensitive to other jobs on the cores, not immune).
Threads: ``OMP_NUM_THREADS`` when set, else every core.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/text_train.py [--steps 20] [--batch-size 8] [--dtype fp32|bf16]
        [--no-packing] [--recipe recipes/text/zentrix-chat.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mmadapt.engine import trainer  # noqa: E402
from mmadapt.engine.seed import seed_everything  # noqa: E402
from mmadapt.modalities.text import TextModality  # noqa: E402
from mmadapt.modalities.text.adapter import TextAdapterConfig, peft_config  # noqa: E402
from mmadapt.modalities.text.tuning import IGNORE, adapter_autocast_loss, check_packing, encode_examples, make_collate  # noqa: E402
from mmadapt.modalities.text.varlen import packed_attention  # noqa: E402
from mmadapt.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fresh_lora(recipe, seed):
    modality = TextModality()
    stack = modality.new_stack(recipe)
    from peft import get_peft_model

    seed_everything(seed)
    model = get_peft_model(stack.model, peft_config(TextAdapterConfig(), stack.base_info["resolved"]))
    return stack, model


def plain_loop(model, encoded, pad_id, steps, batch_size, lr, seed, bf16):
    """The loop from the docs: random batches, pad to longest, mean loss, default AdamW (bf16: under autocast)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order: list[int] = []
    tokens = 0
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch, order = order[:batch_size], order[batch_size:]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), IGNORE)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            x, y = encoded[i]
            ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        with torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def hf_trainer(model, encoded, pad_id, steps, batch_size, lr, seed, bf16):
    """transformers' Trainer over the same examples, batches grouped by length; tokens counted as collated."""
    from transformers import Trainer, TrainingArguments

    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": [x for x, _ in encoded], "labels": [y for _, y in encoded]})
    seen = {"tokens": 0}

    def collate(features):
        seen["tokens"] += sum(len(f["input_ids"]) for f in features)
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.tensor([f["input_ids"] + [pad_id] * (width - len(f["input_ids"])) for f in features])
        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        labels = torch.tensor([f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=lr,
            seed=seed,
            train_sampling_strategy="group_by_length",
            lr_scheduler_type="constant",
            warmup_steps=0,
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=True,
            bf16=bf16,
        )
        trainer_ = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        start, cpu = time.perf_counter(), time.process_time()
        trainer_.train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seen["tokens"], seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/text/zentrix-support.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="the precision of all three sides")
    parser.add_argument("--no-packing", dest="packing", action="store_false", help="mmadapt's trainer on padded rows")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, os.cpu_count() or 1)))
    recipe = load_recipe(args.recipe)
    recipe = recipe.model_copy(
        update={
            "train": recipe.train.model_copy(
                update={
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "warmup_steps": 0,
                    "checkpoint_every": 10**6,
                    "packing": args.packing,
                }
            ),
            "model": recipe.model.model_copy(update={"dtype": args.dtype}),  # every side's base is loaded in this dtype
        }
    )
    bf16 = args.dtype == "bf16"
    data = TextModality().load_data(recipe)

    # the plain baseline
    stack, model = fresh_lora(recipe, recipe.train.seed)
    encoded = encode_examples(stack, data, recipe.train.max_seq_len)
    plain_tokens, plain_seconds, plain_cpu = plain_loop(
        model, encoded, stack.tokenizer.pad_token_id, args.steps, args.batch_size, args.lr, recipe.train.seed, bf16
    )

    # transformers' Trainer, same model, data, batch and steps
    stack, model = fresh_lora(recipe, recipe.train.seed)
    hf_tokens, hf_seconds, hf_cpu = hf_trainer(
        model, encoded, stack.tokenizer.pad_token_id, args.steps, args.batch_size, args.lr, recipe.train.seed, bf16
    )

    # mmadapt's trainer, same model, data, batch and steps
    stack, model = fresh_lora(recipe, recipe.train.seed)
    if args.packing:
        check_packing(model, None)
    plan = trainer.BatchPlan([len(x) for x, _ in encoded], args.batch_size, args.batch_size, recipe.train.seed)
    ours_tokens = sum(len(encoded[i][0]) for step in range(args.steps) for i in plan.step_indices(step))
    with tempfile.TemporaryDirectory() as tmp, packed_attention(model) if args.packing else contextlib.nullcontext():
        cpu = time.process_time()
        report = trainer.train(
            model,
            lengths=[len(x) for x, _ in encoded],
            collate=make_collate(encoded, stack.tokenizer.pad_token_id, next(model.parameters()).device, packing=args.packing),
            loss_fn=adapter_autocast_loss(model, args.dtype),
            config=recipe.train,
            checkpoint_dir=Path(tmp),
            progress=False,
        )
    ours_seconds, ours_cpu = report.train_seconds, time.process_time() - cpu
    plain_tps, hf_tps, ours_tps = plain_tokens / plain_seconds, hf_tokens / hf_seconds, ours_tokens / ours_seconds
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    ours = "mmadapt trainer, packing" if args.packing else "mmadapt trainer, padded"
    print(
        f"LoRA r=8 all-linear on {recipe.base_model}, {len(encoded)} examples, batch {args.batch_size}, {args.steps} steps, {device}, {args.dtype}"
    )
    print(
        f"  plain transformers+peft loop        : {plain_tps:8.1f} tokens/s  ({plain_tokens} tokens in {plain_seconds:.1f} s, CPU {plain_cpu:.1f} s)"
    )
    print(
        f"  transformers Trainer, group_by_length: {hf_tps:8.1f} tokens/s  ({hf_tokens} tokens in {hf_seconds:.1f} s, CPU {hf_cpu:.1f} s)"
    )
    print(f"  {ours:<36}: {ours_tps:8.1f} tokens/s  ({ours_tokens} tokens in {ours_seconds:.1f} s, CPU {ours_cpu:.1f} s)")
    print(
        f"  ratio mmadapt / plain loop          : {ours_tps / plain_tps:.2f}  (by process CPU time: {ours_tokens / ours_cpu / (plain_tokens / plain_cpu):.2f})"
    )
    print(
        f"  ratio mmadapt / Trainer             : {ours_tps / hf_tps:.2f}  (by process CPU time: {ours_tokens / ours_cpu / (hf_tokens / hf_cpu):.2f})"
    )


if __name__ == "__main__":
    main()

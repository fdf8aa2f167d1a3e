"""LoRA training throughput: mmadapt's trainer vs a plain transformers + peft loop, side by side.

Both train the same LoRA (same model, same answer-masked examples, same global batch,
same number of optimizer steps, same seed); the plain loop is what a user writes from
the peft docs: shuffled batches padded to the longest, torch's default AdamW. Tokens/s
counts real (non-pad) tokens. Prints both figures and their ratio.

    python bench/text_train.py [--steps 20] [--batch-size 8] [--model embedded:smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
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
from mmadapt.modalities.text.tuning import IGNORE, encode_examples, make_collate, summed_lm_loss  # noqa: E402
from mmadapt.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fresh_lora(recipe, seed):
    modality = TextModality()
    stack = modality.new_stack(recipe)
    from peft import get_peft_model

    seed_everything(seed)
    model = get_peft_model(stack.model, peft_config(TextAdapterConfig(), stack.base_info["resolved"]))
    return stack, model


def plain_loop(model, encoded, pad_id, steps, batch_size, lr, seed):
    """The loop from the docs: random batches, pad to longest, mean loss, default AdamW."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order: list[int] = []
    tokens = 0
    model.train()
    start = time.perf_counter()
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
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/text/zentrix-support.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    recipe = load_recipe(args.recipe)
    recipe = recipe.model_copy(
        update={"train": recipe.train.model_copy(update={"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 0, "checkpoint_every": 10**6})}
    )
    data = TextModality().load_data(recipe)

    # the plain baseline
    stack, model = fresh_lora(recipe, recipe.train.seed)
    encoded = encode_examples(stack, data, recipe.train.max_seq_len)
    plain_tokens, plain_seconds = plain_loop(model, encoded, stack.tokenizer.pad_token_id, args.steps, args.batch_size, args.lr, recipe.train.seed)

    # mmadapt's trainer, same model, data, batch and steps
    stack, model = fresh_lora(recipe, recipe.train.seed)
    plan = trainer.BatchPlan([len(x) for x, _ in encoded], args.batch_size, args.batch_size, recipe.train.seed)
    ours_tokens = sum(len(encoded[i][0]) for step in range(args.steps) for i in plan.step_indices(step))
    with tempfile.TemporaryDirectory() as tmp:
        report = trainer.train(
            model,
            lengths=[len(x) for x, _ in encoded],
            collate=make_collate(encoded, stack.tokenizer.pad_token_id, torch.device("cpu")),
            loss_fn=summed_lm_loss,
            config=recipe.train,
            checkpoint_dir=Path(tmp),
            progress=False,
        )
    ours_seconds = report.train_seconds
    plain_tps, ours_tps = plain_tokens / plain_seconds, ours_tokens / ours_seconds
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    print(f"LoRA r=8 all-linear on {recipe.base_model}, {len(encoded)} examples, batch {args.batch_size}, {args.steps} steps, {device}")
    print(f"  plain transformers+peft loop : {plain_tps:8.1f} tokens/s  ({plain_tokens} tokens in {plain_seconds:.1f} s)")
    print(f"  mmadapt trainer              : {ours_tps:8.1f} tokens/s  ({ours_tokens} tokens in {ours_seconds:.1f} s)")
    print(f"  ratio mmadapt / plain        : {ours_tps / plain_tps:.2f}")


if __name__ == "__main__":
    main()

"""Turning train Q/A into chat token sequences with the loss on the answer only, for the shared loop.

Used by both the adapter and the full strategy (one data path, one training loop).
Inputs are built with :func:`~mmadapt.modalities.text.prompt.build_messages` from the stack as
fitted so far, so a model trained under a prompt and retrieved passages learns to use
exactly what it will be served with.
"""

from __future__ import annotations

import torch

from mmadapt.engine import trainer
from mmadapt.errors import DataError
from mmadapt.modalities.text.chat import IGNORE, build_chat, encode_conversation
from mmadapt.modalities.text.predict import chat_texts
from mmadapt.modalities.text.retrieval import passage_text
from mmadapt.protocols import DataBundle, FitContext, FitReport


def encode_examples(stack, data: DataBundle, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per train example; labels are IGNORE on the prompt part.

    A Q/A example is its rendered prompt then the answer and EOS (the path the shipped figures
    were measured on); a conversation goes through the chat template whole, every assistant
    turn labelled (chat.encode_conversation)."""
    examples = [e for e in data.train if e.reference]
    if not examples:
        raise DataError(
            "training needs train examples with answers", path=stack.recipe.data.train, fix="set data.train to a Q/A JSONL"
        )
    tok = stack.tokenizer
    prompts, retrieved = chat_texts(stack, [e.input for e in examples])
    end = tok.eos_token or ""
    encoded = []
    for prompt, hits, example in zip(prompts, retrieved, examples):
        if not isinstance(example.input, str):
            messages = build_chat(stack, example.input, [passage_text(h) for h in hits])
            messages.append({"role": "assistant", "content": example.reference})
            encoded.append(encode_conversation(tok, messages, max_len, where=f"train example {example.id}"))
            continue
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(example.reference + end, add_special_tokens=False)["input_ids"]
        keep = max_len - len(answer_ids)
        if keep <= 0:
            answer_ids, prompt_ids = answer_ids[:max_len], []
        elif len(prompt_ids) > keep:
            prompt_ids = prompt_ids[-keep:]  # cut the oldest context, keep the question and the answer
        encoded.append((prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
    return encoded


def make_collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device):
    def collate(indices: list[int]):
        width = max(len(encoded[i][0]) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            x, y = encoded[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        count = int((labels[:, 1:] != IGNORE).sum())
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}, count

    return collate


def summed_lm_loss(model, batch) -> torch.Tensor:
    """Next-token cross-entropy summed over the answer tokens.

    Logits are computed only from the first answer position on (``logits_to_keep``): the
    LM head over a 49k vocabulary is a large share of a small model's step, and prompt
    positions carry no loss.
    """
    labels = batch["labels"]
    width = labels.shape[1]
    has_label = (labels != IGNORE).any(dim=0).nonzero()
    start = max(int(has_label[0]) - 1, 0) if len(has_label) else 0
    keep = width - start
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    logits = out.logits[:, -keep:]  # positions start .. width-1 (prompt tuning prepends virtual tokens)
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, start + 1 :].reshape(-1)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")


def train_text_model(model, stack, data: DataBundle, ctx: FitContext, name: str, overrides=None) -> FitReport:
    """Train ``model`` (peft-wrapped or the full model) on the recipe's train split."""
    config = overrides.apply(stack.recipe.train) if overrides is not None else stack.recipe.train
    encoded = encode_examples(stack, data, config.max_seq_len)
    device = next(model.parameters()).device
    return trainer.train_strategy(
        model,
        ctx,
        name,
        lengths=[len(x) for x, _ in encoded],
        collate=make_collate(encoded, stack.tokenizer.pad_token_id, device),
        loss_fn=summed_lm_loss,
        config=config,
    )

"""Write train.jsonl and eval.jsonl of the Zentrix chat dataset: multi-turn conversations (OpenAI
``messages``) built from the fact table of ../zentrix-support (the same product, the same
knowledge base). Train conversations chain 2-4 train questions; eval conversations hold 1-2
eval questions (paraphrases, never a train wording; 40 scored turns), and every eval assistant turn carries its
``key_fact``. A third of the conversations open with a system turn. Seeded: the same files on
every run. Run: python3 datasets/zentrix-chat/make_dataset.py
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = "You are the Zentrix support assistant. Answer in one short sentence."


def facts() -> list[tuple]:
    spec = importlib.util.spec_from_file_location("zentrix_support", HERE.parent / "zentrix-support" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FACTS


def conversation(ident: str, pairs: list[tuple[str, str, str]], system: bool, with_facts: bool) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for question, answer, key_fact in pairs:
        messages.append({"role": "user", "content": question})
        reply = {"role": "assistant", "content": answer}
        if with_facts:
            reply["key_fact"] = key_fact
        messages.append(reply)
    return {"id": ident, "messages": messages}


def main() -> None:
    rng = random.Random(14)
    table = facts()
    train_pairs = [(q, answer, key) for _, key, answer, train_qs, _ in table for q in train_qs]
    eval_pairs = [(q, answer, key) for _, key, answer, _, eval_qs in table for q in eval_qs]
    train = []
    for n in range(60):
        picked = rng.sample(train_pairs, rng.choice((2, 3, 4)))
        train.append(conversation(f"chat-train-{n + 1:03d}", picked, system=n % 3 == 0, with_facts=False))
    order = eval_pairs[:]
    rng.shuffle(order)
    # 30 conversations, every eval question once: 10 of two exchanges (both scored), 20 of one
    cuts = [2] * 10 + [1] * 20
    starts = [sum(cuts[:n]) for n in range(len(cuts))]
    evaluation = [
        conversation(f"chat-eval-{n + 1:03d}", order[s : s + c], system=n % 3 == 0, with_facts=True)
        for n, (s, c) in enumerate(zip(starts, cuts))
    ]
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(train)} train and {len(evaluation)} eval conversations")


if __name__ == "__main__":
    main()

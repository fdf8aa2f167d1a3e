"""Vocabulary biasing (boost) against the prompt alone and retrieval, and its false alarms, without training.

One model load and one encoder pass per clip (cached), then every configuration decodes the same
encoder states through the same code ``mmadapt run`` uses (``SpeechPredictor``; strategies set on
the stack as their ``compose`` does) and is scored by the speech modality's metrics. Rows:

* ``SPLIT base`` — no prompt;
* ``SPLIT prompt[template]`` — the vocabulary as the decoder prompt;
* ``SPLIT prompt+boost[w=W]`` — plus the boost at weight W (other keys at their defaults);
* ``SPLIT boost:W`` — the vocabulary boosted without the prompt (``boost: {with_prompt: false}``);
* ``SPLIT retrieval[300]`` / ``retrieval+boost`` — per-utterance terms of ``vocabulary-300.txt``.

A ``*N`` after a configuration's name decodes with beam search, N beams (``prompt+boost*4:{"weight": 4}``).

    HF_HUB_OFFLINE=1 python bench/speech_boost.py --split eval --configs base prompt prompt+boost:4 ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import mmadapt  # noqa: E402
from mmadapt.modalities.speech import predict as speech_predict  # noqa: E402
from mmadapt.modalities.speech.boost import BoostConfig  # noqa: E402
from mmadapt.modalities.speech.data import read_vocabulary  # noqa: E402
from mmadapt.modalities.speech.predict import SpeechPredictor, fit_terms  # noqa: E402
from mmadapt.modalities.speech.retrieval import SpeechRetrievalConfig, TermRetriever, term_index  # noqa: E402
from mmadapt.protocols import get_modality  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "speech-domain"
METRICS = ("wer", "b_wer", "u_wer", "term_recall", "term_precision", "false_terms", "false_alarm_rate", "style")


def cache_encoder() -> None:
    """Encode each 30 s window once for all configurations (the states do not depend on the prompt)."""
    seen: dict[str, torch.Tensor] = {}
    encode = speech_predict.Windows.encode

    def cached(self, batch):
        keys = [hashlib.sha1(self.items[n][1].tobytes()).hexdigest() for n in batch]
        todo = [n for n, k in zip(batch, keys) if k not in seen]
        if todo:
            for k, row in zip([keys[batch.index(n)] for n in todo], encode(self, todo)):
                seen[k] = row
        return torch.stack([seen[k] for k in keys])

    speech_predict.Windows.encode = cached


def configure(stack, config: str, vocabulary: list[str], vocab300: list[str], template: str) -> None:
    config, _, own_template = config.partition("@")  # prompt@TEMPLATE: another template
    template = own_template or template
    name, _, arg = config.partition(":")
    name, _, beams = name.partition("*")  # prompt+boost*4: beam search with 4 beams
    stack.recipe.inference.num_beams = int(beams or 1)
    stack.prompt_terms, stack.retriever, stack.boost, stack.boost_passes = None, None, None, set()
    stack.prompt_template, stack.max_prompt_tokens = template, 200
    boost = BoostConfig(**json.loads(arg)) if arg.startswith("{") else (BoostConfig(weight=float(arg)) if arg else None)
    if name == "boost":  # the prompt strategy's terms boosted, not in the decoder prompt
        stack.prompt_terms = fit_terms(stack, vocabulary, 200)
        stack.boost, stack.boost_passes = (boost or BoostConfig()).model_copy(update={"with_prompt": False}), {"static"}
    elif name.startswith("prompt"):
        stack.prompt_terms = fit_terms(stack, vocabulary, 200)
        if "boost" in name:
            stack.boost, stack.boost_passes = boost or BoostConfig(), {"static"}
    elif name.startswith("retrieval"):
        stack.retriever = TermRetriever(term_index(vocab300), SpeechRetrievalConfig(top_k=6))
        if "boost" in name:
            stack.boost, stack.boost_passes = boost or BoostConfig(), {"retrieved"}
    elif name != "base":
        raise SystemExit(f"unknown configuration {config!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="eval", choices=["eval", "plain", "train"])
    parser.add_argument("--configs", nargs="+", default=["base", "prompt", "prompt+boost"])
    parser.add_argument("--template", default=None, help="prompt template (default: the prompt strategy's)")
    parser.add_argument("--fallback", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"data.eval=datasets/speech-domain/{args.split}", "strategies={}", f"inference.fallback.enabled={str(args.fallback).lower()}"]
    recipe = mmadapt.load_recipe(ROOT / "recipes" / "speech" / "domain-vocab.yaml", overrides)
    modality = get_modality("speech")
    data = modality.load_data(recipe)
    stack = modality.new_stack(recipe)
    template = args.template or stack.prompt_template
    vocabulary, vocab300 = read_vocabulary(DATA / "vocabulary.txt"), read_vocabulary(DATA / "vocabulary-300.txt")
    data.resources["vocabulary"] = vocab300 if any(c.startswith("retrieval") for c in args.configs) else vocabulary
    cache_encoder()
    rows = []
    for config in args.configs:
        configure(stack, config, vocabulary, vocab300, template)
        start = time.perf_counter()
        preds = SpeechPredictor(stack).predict([e.input for e in data.eval])
        scored = modality.score(preds, data.eval, METRICS, data)
        corpus = modality.aggregate(scored, METRICS)
        row = {"split": args.split, "config": config, **{m: corpus.get(m) for m in METRICS},
               "false_term_names": sorted(t for r in scored for t in r["false_term_names"]),
               "fallbacks": sum(p.info.get("temperature", 0) > 0 for p in preds), "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Vocabulary biasing (boost) against the prompt alone and retrieval, and its false alarms, without training.

One model load and one encoder pass per clip (cached), then every configuration decodes the same
encoder states through the same code ``mmadapt run`` uses (``SpeechPredictor``; strategies set on
the stack as their ``compose`` does) and is scored by the speech modality's metrics. Rows:

* ``SPLIT base`` — no prompt;
* ``SPLIT prompt[template]`` — the vocabulary as the decoder prompt;
* ``SPLIT prompt+boost[w=W]`` — plus the boost at weight W (other keys at their defaults);
* ``SPLIT boost:W`` — the vocabulary boosted without the prompt (``boost: {with_prompt: false}``);
* ``SPLIT retrieval[300]`` / ``retrieval+boost`` — per-utterance terms of ``vocabulary-300.txt``.

``+rescore`` in a name turns on the rescoring pass (rescore.py) with the decode-time boost at weight 0
unless the JSON sets one (``prompt+rescore*4:{"rescore_bonus": 2}``; ``prompt+boost+rescore`` keeps weight 4).
Each configuration after the first gets its B-WER cut against the first with a paired 95% bootstrap CI
over clips (``b_wer_cut_vs_first``). A ``*N`` after a configuration's name decodes with beam search, N beams (``prompt+boost*4:{"weight": 4}``).

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

import numpy as np  # noqa: E402
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


DECODE_KEY: list[str] = [""]  # the decoding settings of the configuration being run (rescoring keys left out)


def cache_decodes() -> None:
    """Decode each (window, prompt, decoding settings) once: configurations that differ only in their
    rescoring keys share the decoded tokens and differ only in the rescoring pass, which runs after."""
    seen: dict[tuple, object] = {}

    def key(states, prefixes, limits, *rest) -> tuple:
        digest = hashlib.sha1(states.float().cpu().numpy().tobytes()).hexdigest()
        return (DECODE_KEY[0], digest, tuple(map(tuple, prefixes)), tuple(limits), *rest)

    greedy, beam = speech_predict.greedy_decode, speech_predict._beam_decode

    def cached_greedy(model, states, prefixes, limits, *, logprob_sums=None, temperature=0.0, **kwargs):
        k = key(states, prefixes, limits, "greedy", temperature)
        if k not in seen:
            sums: list[float] = []
            seen[k] = (greedy(model, states, prefixes, limits, logprob_sums=sums, temperature=temperature, **kwargs), sums)
        if logprob_sums is not None:
            logprob_sums[:] = seen[k][1]
        return seen[k][0]

    def cached_beam(model, states, prefixes, limits, num_beams, *args, **kwargs):
        k = key(states, prefixes, limits, "beam", num_beams)
        if k not in seen:
            seen[k] = beam(model, states, prefixes, limits, num_beams, *args, **kwargs)
        return seen[k]

    speech_predict.greedy_decode, speech_predict._beam_decode = cached_greedy, cached_beam


def configure(stack, config: str, vocabulary: list[str], vocab300: list[str], template: str) -> None:
    config, _, own_template = config.partition("@")  # prompt@TEMPLATE: another template
    template = own_template or template
    name, _, arg = config.partition(":")
    name, _, beams = name.partition("*")  # prompt+boost*4: beam search with 4 beams
    stack.recipe.inference.num_beams = int(beams or 1)
    stack.prompt_terms, stack.retriever, stack.boost, stack.boost_passes = None, None, None, set()
    stack.prompt_template, stack.max_prompt_tokens = template, 200
    boost = BoostConfig(**json.loads(arg)) if arg.startswith("{") else (BoostConfig(weight=float(arg)) if arg else None)
    if "rescore" in name:  # the rescoring pass; the decode-time boost off unless asked for
        fields = json.loads(arg) if arg.startswith("{") else {}
        weight = fields.get("weight", 4.0 if "boost" in name else 0.0)
        boost = BoostConfig(**{**fields, "weight": weight, "rescore": True})
        name = name.replace("+rescore", "+boost") if "boost" not in name else name
    decoding = boost.model_dump(exclude={k for k in BoostConfig.model_fields if k.startswith("rescore")}) if boost else None
    DECODE_KEY[0] = json.dumps([name, beams, template, decoding])
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


def cut_ci(base: list[dict], rows: list[dict], resamples: int = 2000, seed: int = 0) -> list[float]:
    """B-WER cut of ``rows`` against ``base`` (1 - B-WER / base B-WER), with its paired 95% bootstrap CI
    over clips (both corpora resampled with the same clips): [cut, low, high]."""
    errors = np.array([[r["b_errors"] for r in base], [r["b_errors"] for r in rows]], dtype=np.float64)
    words = np.array([r["b_words"] for r in base], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(base), size=(resamples, len(base)))
    keep = words[idx].sum(1) > 0
    cuts = 1.0 - errors[1][idx].sum(1)[keep] / errors[0][idx].sum(1)[keep].clip(min=1e-9)
    point = 1.0 - errors[1].sum() / max(errors[0].sum(), 1e-9)
    return [round(float(point), 3), round(float(np.quantile(cuts, 0.025)), 3), round(float(np.quantile(cuts, 0.975)), 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="eval", choices=["eval", "plain", "train"])
    parser.add_argument("--configs", nargs="+", default=["base", "prompt", "prompt+boost"])
    parser.add_argument("--template", default=None, help="prompt template (default: the prompt strategy's)")
    parser.add_argument("--fallback", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the split's first N clips")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"data.eval=datasets/speech-domain/{args.split}", "strategies={}", f"inference.fallback.enabled={str(args.fallback).lower()}"]
    recipe = mmadapt.load_recipe(ROOT / "recipes" / "speech" / "domain-vocab.yaml", overrides)
    modality = get_modality("speech")
    data = modality.load_data(recipe)
    data.eval = data.eval[: args.limit]
    stack = modality.new_stack(recipe)
    template = args.template or stack.prompt_template
    vocabulary, vocab300 = read_vocabulary(DATA / "vocabulary.txt"), read_vocabulary(DATA / "vocabulary-300.txt")
    data.resources["vocabulary"] = vocab300 if any(c.startswith("retrieval") for c in args.configs) else vocabulary
    cache_encoder()
    cache_decodes()
    rows = []
    first = None  # the first configuration's per-clip scores (the base of the B-WER cut)
    for config in args.configs:
        configure(stack, config, vocabulary, vocab300, template)
        start = time.perf_counter()
        preds = SpeechPredictor(stack).predict([e.input for e in data.eval])
        scored = modality.score(preds, data.eval, METRICS, data)
        corpus = modality.aggregate(scored, METRICS)
        row = {"split": args.split, "config": config, **{m: corpus.get(m) for m in METRICS},
               "false_term_names": sorted(t for r in scored for t in r["false_term_names"]),
               "substituted": [f"{s['from']}->{s['to']}" for p in preds for s in p.info.get("substituted", [])],
               "fallbacks": sum(p.info.get("temperature", 0) > 0 for p in preds), "seconds": round(time.perf_counter() - start, 1)}
        if first is None:
            first = scored
        elif any(r["b_words"] for r in scored):
            row["b_wer_cut_vs_first"] = cut_ci(first, scored)  # [cut, 95% CI low, high] against the first configuration
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

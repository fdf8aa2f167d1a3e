"""mmadapt's batched Whisper transcription against the transformers pipeline and CTranslate2, side by side.

All sides transcribe the same files with the same model (the embedded Whisper tiny.en, greedy, no
prompt) in one process, one after the other, and the script prints each one's throughput in
audio seconds per wall-clock second, its ratio to mmadapt's, and each side's WER, so that a
speed-up cannot come from cutting transcripts short.

* mmadapt: ``mmadapt.modalities.speech.predict.transcribe`` with the shipped recipe's ``inference``
  section (windows of similar length batched, ``max_new_tokens`` bounded by the audio's
  length, ``torch.inference_mode``), reading and resampling each file itself;
* pipeline: ``transformers.pipeline("automatic-speech-recognition", model=<same folder>)`` called
  as a competent user would: the whole list of already-decoded 16 kHz arrays in one call with
  ``batch_size=8`` and ``generate_kwargs={"max_new_tokens": <the recipe's cap>}`` (so a repetition
  loop costs it no more than the cap costs us; its file reading is not timed, which favours it);
* ct2 float32 / ct2 int8: the same weights converted by ctranslate2's own converter
  (``mmadapt.models.ct2_export``, not timed) and decoded greedily with
  ``ctranslate2.models.Whisper.generate`` (``beam_size=1``), 8 clips a batch in length order, log-mel
  features from the same ``WhisperFeatureExtractor``, the same ``max_new_tokens`` cap, CTranslate2's
  default suppression; ``compute_type`` float32 and int8 (weights quantised at load), ``intra_threads``
  = ``--threads``.

mmadapt's greedy transcripts are token for token those of ``model.generate`` (tested in
tests/speech/test_strategies.py) and of CTranslate2 float32 (tests/speech/test_export_ct2.py); the
pipeline's differ on some clips (its own preprocessing and ``generate`` arguments).

    HF_HUB_OFFLINE=1 python bench/speech_decode.py [--split eval] [--limit N] [--threads 1] [--batch-size 8] [--sides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "speech" / "domain-vocab.yaml"
DATA = ROOT / "datasets" / "speech-domain"


def read_split(split: str, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / split / "metadata.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["path"] = str(DATA / split / row["file_name"])
    return rows[:limit] if limit else rows


def mmadapt_side(paths: list[str], batch_size: int | None):
    import mmadapt
    from mmadapt.modalities.speech.predict import transcribe
    from mmadapt.protocols import get_modality

    overrides = ["strategies={}"] + ([f"inference.batch_size={batch_size}"] if batch_size else [])
    recipe = mmadapt.load_recipe(RECIPE, overrides=overrides)
    stack = get_modality("speech").new_stack(recipe)
    return stack, lambda files: transcribe(stack, files, [None] * len(files))


def pipeline_side(folder: Path, max_new_tokens: int):
    from transformers import pipeline

    pipe = pipeline("automatic-speech-recognition", model=str(folder), device=-1)

    def run(audios):
        inputs = [{"raw": a, "sampling_rate": 16000} for a in audios]
        out = pipe(inputs, batch_size=8, generate_kwargs={"max_new_tokens": max_new_tokens})
        return [o["text"].strip() for o in out]

    return run


def ct2_side(stack, folder: Path, compute_type: str, threads: int, max_new_tokens: int):
    """Plain CTranslate2 greedy decoding: batches of 8 in length order, prefix <|startoftranscript|> <|notimestamps|>."""
    import ctranslate2

    from mmadapt.modalities.speech.ct2_engine import max_length_for

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type, intra_threads=threads)
    fe, tok = stack.processor.feature_extractor, stack.processor.tokenizer
    prefix = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])

    def run(audios):
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        texts = [""] * len(audios)
        for start in range(0, len(order), 8):
            batch = order[start : start + 8]
            feats = fe([audios[i] for i in batch], sampling_rate=16000, return_tensors="np").input_features
            results = model.generate(
                ctranslate2.StorageView.from_array(feats),
                [prefix] * len(batch),
                beam_size=1,
                max_length=max_length_for([prefix], max_new_tokens),
            )
            for i, r in zip(batch, results):
                texts[i] = tok.decode(r.sequences_ids[0][:max_new_tokens], skip_special_tokens=True).strip()
        return texts

    return run


def timed(fn, arg) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = fn(arg)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="eval", choices=["eval", "train", "plain"])
    parser.add_argument("--limit", type=int, default=None, help="first N files of the split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="mmadapt's batch (default: the recipe's inference.batch_size)"
    )
    parser.add_argument(
        "--sides",
        nargs="+",
        default=["pipeline", "ct2:float32", "ct2:int8"],
        help="besides mmadapt: pipeline, ct2:<compute_type>",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmadapt.modalities.speech.audio import SAMPLE_RATE, load_audio
    from mmadapt.modalities.speech.metrics import score_corpus

    rows = read_split(args.split, args.limit)
    paths = [r["path"] for r in rows]
    refs = [r["transcription"] for r in rows]
    vocabulary = [t.strip() for t in (DATA / "vocabulary.txt").read_text().splitlines() if t.strip()]
    audios = [load_audio(p) for p in paths]
    audio_seconds = sum(len(a) for a in audios) / SAMPLE_RATE

    stack, ours = mmadapt_side(paths, args.batch_size)
    cfg = stack.recipe.inference
    sides = {"mmadapt": (ours, paths)}
    if "pipeline" in args.sides:
        sides["pipeline"] = (pipeline_side(Path(stack.base_info["resolved"]), cfg.max_new_tokens), audios)
    ct2_types = [s.split(":", 1)[1] for s in args.sides if s.startswith("ct2:")]
    if ct2_types:
        import tempfile

        from mmadapt.models.ct2_export import write_ct2_whisper

        holder = tempfile.TemporaryDirectory(prefix="bench-ct2-")
        folder = write_ct2_whisper(stack.model, stack.processor, Path(holder.name) / "model")
        for ctype in ct2_types:
            sides[f"ct2 {ctype}"] = (ct2_side(stack, folder, ctype, args.threads, cfg.max_new_tokens), audios)
    for fn, arg in sides.values():
        fn(arg[:1])  # warm-up: first-call allocations and lazy imports out of every timing

    results = {}
    for name, (fn, arg) in sides.items():
        texts, seconds = timed(fn, arg)
        _, agg = score_corpus(refs, texts, vocabulary)
        results[name] = {"seconds": seconds, "throughput": audio_seconds / seconds, "wer": agg["wer"], "texts": texts}

    print(
        f"{len(paths)} files of {args.split}, {audio_seconds:.1f} s of audio, {args.threads} thread(s), model {stack.base_info['resolved']}"
    )
    print(
        f"mmadapt: batch {cfg.batch_size}, max_new_tokens {cfg.max_new_tokens}, tokens_per_second {cfg.tokens_per_second}; "
        f"pipeline: batch_size 8, max_new_tokens {cfg.max_new_tokens}; ct2: batch 8, max_new_tokens {cfg.max_new_tokens}"
    )
    print(f"{'':<14} {'seconds':>8} {'audio s/s':>10} {'WER %':>6} {'mmadapt/it':>10} {'same text':>9}")
    mine = results["mmadapt"]
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["texts"], mine["texts"]))
        ratio = mine["throughput"] / r["throughput"]
        print(
            f"{name:<14} {r['seconds']:8.1f} {r['throughput']:10.2f} {100 * r['wer']:6.1f} {ratio:9.2f}x {same:>4}/{len(paths)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

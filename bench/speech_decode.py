"""mmadapt's batched Whisper transcription against the plain transformers pipeline, side by side.

Both transcribe the same files with the same model (the embedded Whisper tiny.en, greedy, no
prompt) in one process, one after the other, and the script prints each one's throughput in
audio seconds per wall-clock second and their ratio (mmadapt / pipeline), with each side's WER
so that a speed-up cannot come from cutting transcripts short.

* mmadapt: ``mmadapt.modalities.speech.predict.transcribe`` with the shipped recipe's ``inference``
  section (windows of similar length batched, ``max_new_tokens`` bounded by the audio's
  length, ``torch.inference_mode``), reading and resampling each file itself;
* pipeline: ``transformers.pipeline("automatic-speech-recognition", model=<same folder>)``
  called the plain way, one file at a time, on the already-decoded 16 kHz arrays (its file
  reading is not timed, which favours the pipeline).

mmadapt's greedy transcripts are token for token those of ``model.generate`` (tested in
tests/speech/test_strategies.py); the pipeline's differ on some clips (its own preprocessing
and ``generate`` arguments), so each side's WER is printed next to its speed.

    HF_HUB_OFFLINE=1 python bench/speech_decode.py [--split eval] [--limit N] [--threads 1] [--batch-size 8]
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


def pipeline_side(folder: Path):
    from transformers import pipeline

    pipe = pipeline("automatic-speech-recognition", model=str(folder), device=-1)
    return lambda audios: [pipe({"raw": a, "sampling_rate": 16000})["text"].strip() for a in audios]


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
    theirs = pipeline_side(Path(stack.base_info["resolved"]))
    ours(paths[:1])  # warm-up: first-call allocations and lazy imports out of both timings
    theirs(audios[:1])

    results = {}
    for name, fn, arg in (("mmadapt", ours, paths), ("pipeline", theirs, audios)):
        texts, seconds = timed(fn, arg)
        _, agg = score_corpus(refs, texts, vocabulary)
        results[name] = {"seconds": seconds, "throughput": audio_seconds / seconds, "wer": agg["wer"]}

    cfg = stack.recipe.inference
    print(
        f"{len(paths)} files of {args.split}, {audio_seconds:.1f} s of audio, {args.threads} thread(s), model {stack.base_info['resolved']}"
    )
    print(
        f"mmadapt: batch {cfg.batch_size}, max_new_tokens {cfg.max_new_tokens}, tokens_per_second {cfg.tokens_per_second}; pipeline: defaults, one file a call"
    )
    print(f"{'':<10} {'seconds':>8} {'audio s/s':>10} {'WER %':>6}")
    for name, r in results.items():
        print(f"{name:<10} {r['seconds']:8.1f} {r['throughput']:10.2f} {100 * r['wer']:6.1f}")
    ratio = results["mmadapt"]["throughput"] / results["pipeline"]["throughput"]
    print(f"ratio mmadapt / pipeline: {ratio:.2f}x (target >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Baseline of the embedded Whisper tiny.en on the speech-domain dataset, with and without a vocabulary prompt.

Rows of the printed table:

* ``plain``  — 20 plain English sentences: checks the CTranslate2 -> transformers converter;
* ``eval``   — 40 domain utterances, no prompt;
* ``eval + prompt`` — the same, with the whole vocabulary (``vocabulary.txt``) as Whisper's
  previous-text prompt (``processor.get_prompt_ids``).

Greedy decoding; new tokens are bounded by ``--max-new-tokens`` and by 6 tokens per second of
the batch's longest clip + 8 (tiny.en can loop: one looping clip would otherwise add ~90 errors). Audio longer than 30 s is
transcribed window by window. Metrics: :mod:`mmadapt.modalities.speech.metrics` (WER after Whisper's
English normaliser with the vocabulary terms protected).

    HF_HUB_OFFLINE=1 python bench/speech_baseline.py [--json out.json] [--limit N] [--threads 1]
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

from mmadapt.modalities.speech.audio import SAMPLE_RATE, chunk_audio, load_audio  # noqa: E402
from mmadapt.modalities.speech.metrics import score_corpus  # noqa: E402
from mmadapt.models.ct2_whisper import embedded_whisper_tiny_en  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "speech-domain"


def read_split(split: str, limit: int | None = None) -> list[dict]:
    folder = DATA / split
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["path"] = folder / row["file_name"]
    return rows[:limit] if limit else rows


def strip_prompt(ids: list[int], sot: int) -> list[int]:
    """Drop whatever precedes the transcript: the prompt and forced tokens, found by token id."""
    if sot in ids:
        ids = ids[len(ids) - ids[::-1].index(sot) :]
    return ids


class Transcriber:
    def __init__(self, folder: Path, max_new_tokens: int, batch_size: int, tokens_per_second: float = 0.0):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
        self.processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
        self.sot = self.model.generation_config.decoder_start_token_id
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tokens_per_second = tokens_per_second

    def prompt_ids(self, text: str | None):
        return None if not text else self.processor.get_prompt_ids(text, return_tensors="pt")

    @torch.inference_mode()
    def __call__(self, audios: list, prompt: str | None = None) -> list[str]:
        """Transcripts of mono 16 kHz arrays; long audio goes through 30 s windows joined by spaces."""
        windows, owner = [], []
        for i, audio in enumerate(audios):
            for chunk in chunk_audio(audio, SAMPLE_RATE):
                windows.append(chunk.samples)
                owner.append(i)
        prompt_ids = self.prompt_ids(prompt)
        pieces: list[str] = []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            feats = self.processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            limit = self.max_new_tokens
            if self.tokens_per_second > 0:  # a loop cannot run longer than the speech could need
                longest = max(len(w) for w in batch) / SAMPLE_RATE
                limit = min(limit, int(self.tokens_per_second * longest) + 8)
            kwargs = {"max_new_tokens": limit, "num_beams": 1, "do_sample": False}
            if prompt_ids is not None:
                kwargs["prompt_ids"] = prompt_ids
            out = self.model.generate(feats, **kwargs)
            for seq in out.tolist():
                pieces.append(self.processor.tokenizer.decode(strip_prompt(seq, self.sot), skip_special_tokens=True).strip())
        texts = [""] * len(audios)
        for i, piece in zip(owner, pieces):
            texts[i] = (texts[i] + " " + piece).strip()
        return texts


def run(
    transcriber: Transcriber, split: str, vocabulary: list[str], prompt: str | None, limit: int | None
) -> tuple[list[dict], dict]:
    rows = read_split(split, limit)
    audios = [load_audio(r["path"]) for r in rows]
    t0 = time.perf_counter()
    hyps = transcriber(audios, prompt)
    seconds = time.perf_counter() - t0
    per_utt, agg = score_corpus([r["transcription"] for r in rows], hyps, vocabulary, ids=[r["file_name"] for r in rows])
    agg["seconds"] = seconds
    agg["audio_seconds"] = sum(len(a) for a in audios) / SAMPLE_RATE
    return per_utt, agg


def fmt(x) -> str:
    return "   -  " if x is None else f"{100 * x:6.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--tokens-per-second", type=float, default=6.0, help="cap new tokens at this x the longest clip's seconds + 8 (0: no cap)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N clips of each split")
    parser.add_argument("--json", type=Path, default=None, help="write per-utterance rows and aggregates here")
    parser.add_argument("--show", type=int, default=0, help="print N worst eval utterances per condition")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    vocabulary = [t.strip() for t in (DATA / "vocabulary.txt").read_text().splitlines() if t.strip()]
    prompt = ", ".join(vocabulary) + "."
    transcriber = Transcriber(embedded_whisper_tiny_en(), args.max_new_tokens, args.batch_size, args.tokens_per_second)
    print(f"prompt: {len(transcriber.prompt_ids(prompt)) - 1} tokens ({len(vocabulary)} terms)", file=sys.stderr)

    conditions = [("plain", "plain", None), ("eval", "eval", None), ("eval + prompt", "eval", prompt)]
    results = {}
    header = f"{'condition':<15} {'n':>3} {'WER%':>6} {'medWER':>6} {'CER%':>6} {'B-WER':>6} {'U-WER':>6} {'recall':>6} {'prec':>6} {'sec':>6}"
    lines = [header, "-" * len(header)]
    for name, split, text in conditions:
        rows, agg = run(transcriber, split, vocabulary, text, args.limit)
        results[name] = {"aggregate": agg, "rows": rows}
        lines.append(
            f"{name:<15} {agg['utterances']:>3} {fmt(agg['wer'])} {fmt(agg['median_wer'])} {fmt(agg['cer'])} {fmt(agg['b_wer'])} "
            f"{fmt(agg['u_wer'])} {fmt(agg['term_recall'])} {fmt(agg['term_precision'])} {agg['seconds']:6.1f}"
        )
        if args.show:
            for r in sorted(rows, key=lambda r: -r["wer"])[: args.show]:
                print(
                    f"  [{name}] {r['id']} WER {r['wer']:.2f}\n    ref: {r['ref_norm']}\n    hyp: {r['hyp_norm']}",
                    file=sys.stderr,
                )
    print("\n".join(lines))
    print("(B-WER/U-WER/recall/precision: 'plain' has no terms; % of words/terms; sec = decoding time)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

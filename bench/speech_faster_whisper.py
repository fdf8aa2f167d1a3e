"""A speech version exported with ``--format ct2`` and served by faster-whisper, against mmadapt, same clips.

The version is exported to a temporary folder (``mmadapt.export``, ``format="ct2"``) and loaded with
``faster_whisper.WhisperModel`` (float32, one thread); its prompt strategy's terms, if any, go in as
``initial_prompt``. faster-whisper decodes as mmadapt does: ``beam_size=1, temperature=0,
without_timestamps=True, condition_on_previous_text=False``. Two comparisons, printed as identical
transcripts out of N and each side's WER (``jiwer`` on lowercased text, punctuation kept):

* as-is: the version's eval clips as they are against the transcripts the run wrote to its
  ``predictions.jsonl``; faster-whisper pads a short clip's log-mel with zeros (openai-whisper's way)
  where mmadapt pads the audio, so the two read slightly different input;
* padded: the first ``--padded`` clips padded with silence to 30 s, transcribed again by mmadapt
  (``load_artifact``) and by faster-whisper with the same token cap (no-speech skipping off): the
  same features, so any difference would be the export's.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/speech_faster_whisper.py runs/speech-domain-vocab/v0001 [--limit N] [--padded 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
from faster_whisper import WhisperModel

import mmadapt
from mmadapt.engine.export import export
from mmadapt.modalities.speech.ct2_engine import max_length_for
from mmadapt.modalities.speech.predict import prompt_token_ids


def wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer([r.lower() for r in refs], [h.lower() for h in hyps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="first N clips of predictions.jsonl (0: all)")
    parser.add_argument("--padded", type=int, default=10, help="clips padded to 30 s for the second comparison")
    args = parser.parse_args()

    loaded = mmadapt.load_artifact(args.version)
    rows = [json.loads(line) for line in (args.version / "predictions.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    audio = {r["id"]: Path(loaded.recipe.path(loaded.recipe.data.eval)) / Path(r["id"]).name for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct2"
        export(args.version, folder, format="ct2")
        saved = folder / "mmadapt" / "prompt" / "prompt.json"
        prompt = json.loads(saved.read_text()) if saved.exists() else None
        initial = prompt["template"].format(terms=", ".join(prompt["terms"])) if prompt else None
        model = WhisperModel(str(folder), device="cpu", compute_type="float32", cpu_threads=1)

        def transcribe(path: Path, **options) -> str:
            segments, _info = model.transcribe(
                str(path),
                beam_size=1,
                temperature=0,
                without_timestamps=True,
                condition_on_previous_text=False,
                initial_prompt=initial,
                **options,
            )
            return "".join(s.text for s in segments).strip()

        refs, ours = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
        theirs = [transcribe(audio[r["id"]]) for r in rows]
        same = sum(a == b for a, b in zip(ours, theirs))
        print(
            f"as-is   {len(rows)} clips: same text {same}/{len(rows)}  WER mmadapt {wer(refs, ours):.3f}  "
            f"faster-whisper {wer(refs, theirs):.3f}  (prompt: {'yes' if initial else 'no'})"
        )

        padded = []
        for r in rows[: args.padded]:
            samples, rate = sf.read(audio[r["id"]], dtype="float32")
            path = Path(tmp) / Path(r["id"]).name
            sf.write(path, np.pad(samples, (0, max(0, 30 * rate - len(samples)))), rate, subtype="FLOAT")
            padded.append(path)
        ours_padded = [p.output for p in loaded.predict([str(p) for p in padded])]
        stack = loaded.stack
        prefix = (prompt_token_ids(stack, stack.prompt_terms) or []) + [0, 0]  # [prev prompt] sot notimestamps
        cap = stack.recipe.inference.max_new_tokens  # tokens_per_second at 30 s allows more than this cap
        theirs_padded = [
            transcribe(p, no_speech_threshold=None, max_new_tokens=max_length_for([prefix], cap) - len(prefix)) for p in padded
        ]
        same = sum(a == b for a, b in zip(ours_padded, theirs_padded))
        print(f"padded  {len(padded)} clips to 30 s: same text {same}/{len(padded)}")
        for a, b in zip(ours_padded, theirs_padded):
            if a != b:
                print(f"  mmadapt:        {a}\n  faster-whisper: {b}")


if __name__ == "__main__":
    main()

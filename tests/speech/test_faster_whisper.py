"""`mmadapt export --format ct2` served by faster-whisper itself: the folder loads with
`faster_whisper.WhisperModel` and its greedy transcripts equal mmadapt's (tiny random Whisper + a LoRA,
alone and under a vocabulary prompt, which faster-whisper takes as ``initial_prompt`` from the export's
``mmadapt/prompt/prompt.json``).

Two conventions differ between the libraries, and the test meets each where a real deployment is:
- Padding: mmadapt (transformers' extractor) pads a short clip's *waveform* with silence to 30 s before
  the log-mel; faster-whisper (openai-whisper's way) pads the *log-mel* with zeros. The encoder inputs
  differ, which a random width-32 model turns into other tokens (a trained model mostly not). On clips
  padded with silence to 30 s both see the same features, and mmadapt's transcripts of the padded clips
  equal those of the originals (asserted), so the comparison is with mmadapt's own transcripts.
- Suppressed tokens: faster-whisper's default (`suppress_tokens=[-1]`) is openai-whisper's non-speech
  list computed from the tokenizer, plus the control tokens; it ignores the model's own list. A hub
  checkpoint's generation config holds that same list (the embedded tiny.en's 90 ids are exactly
  faster-whisper's), so the tiny model is given the list computed for its tokenizer, as a real one has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt.cli import main
from mmadapt.modalities.speech.ct2_engine import max_length_for
from mmadapt.modalities.speech.predict import prompt_token_ids

pytest.importorskip("ctranslate2")
faster_whisper = pytest.importorskip("faster_whisper")
DATASET = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"
CAP = 12  # mmadapt's max_new_tokens for these clips


def real_checkpoint_suppression(folder: Path) -> None:
    """Set the tiny Whisper's suppressed tokens to openai-whisper's list for its tokenizer."""
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    tokenizer = Tokenizer(tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")), multilingual=False)
    path = folder / "generation_config.json"
    config = json.loads(path.read_text())
    config["suppress_tokens"] = list(get_suppressed_tokens(tokenizer, [-1]))
    path.write_text(json.dumps(config))


def padded_clips(n: int, out: Path) -> tuple[list[str], list[str]]:
    """The first ``n`` eval clips, and each padded with silence to 30 s (written to ``out``)."""
    import soundfile as sf

    rows = [json.loads(line) for line in (DATASET / "eval" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    originals, padded = [], []
    out.mkdir()
    for row in rows[:n]:
        audio, rate = sf.read(DATASET / "eval" / row["file_name"], dtype="float32")
        path = out / Path(row["file_name"]).name
        sf.write(path, np.pad(audio, (0, 30 * rate - len(audio))), rate, subtype="FLOAT")
        originals.append(str(DATASET / "eval" / row["file_name"]))
        padded.append(str(path))
    return originals, padded


def initial_prompt(export_dir: Path) -> str | None:
    """The prompt a ``prompt`` strategy left in the export's sidecar, as faster-whisper's ``initial_prompt``."""
    found = list((export_dir / "mmadapt").rglob("prompt.json"))
    if not found:
        return None
    record = json.loads(found[0].read_text())
    return record["template"].format(terms=", ".join(record["terms"]))


@pytest.mark.parametrize("strategies", [{"adapter": {"r": 4, "alpha": 8}}, {"prompt": {}, "adapter": {"r": 4, "alpha": 8}}])
def test_faster_whisper_serves_a_lora_export_with_mmadapt_transcripts(speech_recipe, tiny_whisper_dir, tmp_path, strategies):
    base = tmp_path / "tiny"
    shutil.copytree(tiny_whisper_dir, base)
    real_checkpoint_suppression(base)
    inference = {"max_new_tokens": CAP, "tokens_per_second": 0, "batch_size": 4}
    recipe = speech_recipe(strategies, base_model=str(base), inference=inference)
    version = mmadapt.run(mmadapt.load_recipe(recipe), progress=False).version_dir
    out = tmp_path / "ct2"
    result = CliRunner().invoke(main, ["export", str(version), str(out), "--format", "ct2"])
    assert result.exit_code == 0, result.output

    originals, padded = padded_clips(10, tmp_path / "clips")
    loaded = mmadapt.load_artifact(version)
    ours = [p.output for p in loaded.predict(padded)]
    assert ours == [p.output for p in loaded.predict(originals)], "silence to 30 s changes nothing for mmadapt"
    prompt = initial_prompt(out)
    assert (prompt is not None) == ("prompt" in strategies) == bool(loaded.stack.prompt_terms)
    # the decoder prefix both sides build: [<|startofprev|> prompt] <|startoftranscript|> <|notimestamps|>
    prefix = (prompt_token_ids(loaded.stack, loaded.stack.prompt_terms) or []) + [0, 0]

    model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="float32", cpu_threads=1)
    assert model.feat_kwargs["feature_size"] == model.model.n_mels == 80 and not model.model.is_multilingual
    theirs = []
    for clip in padded:
        segments, info = model.transcribe(
            clip,
            beam_size=1,
            temperature=0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=prompt,
            no_speech_threshold=None,  # a random model's no-speech probability would drop whole windows
            # faster-whisper asks CTranslate2 for max_length = prefix + max_new_tokens, of which CTranslate2
            # samples at most min(max_length // 2, ...) (ct2_engine.py): this stops it where mmadapt stops
            max_new_tokens=max_length_for([prefix], CAP) - len(prefix),
        )
        theirs.append("".join(s.text for s in segments).strip())
        assert info.language == "en" and info.duration == pytest.approx(30.0)
    assert sum(bool(t) for t in ours) >= 8 and theirs == ours

"""The shipped speech recipe through the real CLI on the embedded Whisper tiny.en, reduced: the
prompt stack against the base model on the first 12 eval clips; the vocabulary prompt must cut
the errors on domain terms (B-WER) by at least a fifth without training anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine.artifact import read_manifest, versions

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "speech" / "domain-vocab.yaml"
REDUCED = ["--set", "eval.limit=12", "--set", "eval.bootstrap=0", "--set", "eval.latency_samples=1", "--quiet", "--show", "0"]


def _run(out: Path, *overrides: str) -> dict:
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--set", f"output_dir={out}", *REDUCED, *overrides])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    name = "speech-domain-vocab"
    assert versions(out / name) == ["v0001"]
    version = out / name / "v0001"
    rows = [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["output"], str) for r in rows)
    return read_manifest(version)


def test_shipped_speech_recipe_prompt_cuts_b_wer_against_base(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    prompt = _run(tmp_path / "prompt")
    base = _run(tmp_path / "base", "--set", "strategies={}")
    assert prompt["stack"] == ["prompt"] and base["stack"] == []
    assert prompt["data"]["fingerprint"] == base["data"]["fingerprint"]
    assert prompt["costs"]["train_seconds"] == 0 and prompt["costs"]["trainable_params"] == 0
    saved = json.loads((tmp_path / "prompt" / "speech-domain-vocab" / "v0001" / "prompt" / "prompt.json").read_text())
    assert saved["left_out"] == 0 and len(saved["terms"]) == 40, "the 40-term vocabulary fits Whisper's prompt budget"

    b_prompt, b_base = prompt["metrics"]["b_wer"], base["metrics"]["b_wer"]
    print(
        f"12 eval clips: B-WER base {b_base:.3f} -> prompt {b_prompt:.3f}; U-WER {base['metrics']['u_wer']:.3f} -> {prompt['metrics']['u_wer']:.3f}"
    )
    assert b_base > 0.5, "tiny.en gets the invented terms wrong"
    assert b_prompt <= 0.8 * b_base, (b_prompt, b_base)
    assert prompt["metrics"]["term_recall"] > base["metrics"]["term_recall"]


def test_retrieval_beats_prompt_when_the_vocabulary_exceeds_the_prompt_budget(tmp_path, monkeypatch):
    """300 terms, alphabetical (the spoken 40 scattered among 260 distractors): the prompt keeps the
    47 that fit Whisper's budget, retrieval picks each clip's terms from all 300."""
    monkeypatch.chdir(ROOT)
    terms = [t for t in (ROOT / "datasets" / "speech-domain" / "vocabulary-300.txt").read_text().splitlines() if t.strip()]
    vocabulary = tmp_path / "vocabulary-300-sorted.txt"
    vocabulary.write_text("\n".join(sorted(terms, key=str.lower)) + "\n")
    big = ["--set", f"data.vocabulary={vocabulary}"]
    prompt = _run(tmp_path / "prompt", *big)
    retrieval = _run(tmp_path / "retrieval", *big, "--set", "strategies={retrieval: {top_k: 6}}")
    saved = json.loads((tmp_path / "prompt" / "speech-domain-vocab" / "v0001" / "prompt" / "prompt.json").read_text())
    assert saved["left_out"] > 200, "most of the vocabulary does not fit the prompt"
    assert retrieval["costs"]["train_seconds"] == 0 and retrieval["costs"]["trainable_params"] == 0

    b_prompt, b_retrieval = prompt["metrics"]["b_wer"], retrieval["metrics"]["b_wer"]
    print(f"300 terms, 12 eval clips: B-WER prompt {b_prompt:.3f}, retrieval {b_retrieval:.3f}")
    assert b_retrieval < b_prompt - 0.1, (b_retrieval, b_prompt)
    assert retrieval["metrics"]["term_recall"] > prompt["metrics"]["term_recall"]


def test_converted_whisper_transcribes_plain_english_below_10_percent_wer(tmp_path, monkeypatch):
    """The CTranslate2 -> transformers conversion is sound: the base model on the 20 plain
    (no domain term) espeak-ng sentences of datasets/speech-domain/plain, through `mmadapt run`."""
    monkeypatch.chdir(ROOT)
    plain = "datasets/speech-domain/plain"
    result = CliRunner().invoke(
        main,
        ["run", str(RECIPE), "--set", f"output_dir={tmp_path}", "--set", f"data.eval={plain}", "--set", "strategies={}",
         "--set", "eval.bootstrap=0", "--set", "eval.latency_samples=1", "--quiet", "--show", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "speech-domain-vocab" / "v0001")
    assert manifest["costs"]["eval_examples"] == 20
    print(f"plain English, 20 clips: WER {manifest['metrics']['wer']:.3f}")
    assert manifest["metrics"]["wer"] < 0.10

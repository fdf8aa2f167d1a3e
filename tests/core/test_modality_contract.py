"""What shared code reads from the modality contract, on the shipped speech and image recipes:
advise ranks their retrieval stacks (the vocabulary and the references are what retrieval
searches), and drift compares what stands for their inputs (transcripts, prompt texts), not
file paths."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.govern.advise import advise_recipe
from mmadapt.govern.drift import drift
from mmadapt.protocols import get_modality, modality_names
from mmadapt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "recipes/speech/domain-vocab.yaml"
IMAGE = ROOT / "recipes/image/brand-style.yaml"
CONSTRAINTS = dict(privacy="internal", latency_ms=2000, gpu_hours=4, release_cadence="quarterly")


def test_every_builtin_modality_declares_the_contract():
    for name in ("text", "image", "speech"):
        modality = get_modality(name)  # get_modality checks the contract (check_modality)
        assert modality.name == name and name in modality_names()
        assert modality.lower_is_better <= set(modality.metrics)
    assert get_modality("speech").lower_is_better >= {"wer", "b_wer"}
    assert not get_modality("text").lower_is_better and not get_modality("image").lower_is_better


@pytest.mark.parametrize("path", [SPEECH, IMAGE], ids=["speech", "image"])
def test_advise_ranks_the_retrieval_stacks_of_speech_and_image_recipes(path, tmp_path):
    recipe = load_recipe(path, [f"output_dir={tmp_path}"])  # no compare report: the rules alone
    advice = advise_recipe(recipe, **CONSTRAINTS)
    ranked = [advice.recommended, *advice.alternatives]
    assert "prompt+retrieval" in ranked and "prompt+retrieval+adapter" in ranked
    assert not any("D1" in rules for rules in advice.excluded.values())


def test_advise_still_excludes_retrieval_when_the_recipe_names_nothing_to_search(tmp_path):
    recipe = load_recipe(SPEECH, [f"output_dir={tmp_path}", "data.vocabulary=null"])
    advice = advise_recipe(recipe, **CONSTRAINTS)
    assert advice.excluded.get("prompt+retrieval") == ["D1"]


def _copy_clips(lines: list[str], source: Path, folder: Path) -> Path:
    folder.mkdir()
    for line in lines:
        shutil.copy(source / json.loads(line)["file_name"], folder)
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow  # decodes 140 clips' headers and loads the MiniLM embedder
def test_speech_drift_reads_transcripts_shifted_clips_drift_held_out_clips_do_not(tmp_path):
    source = ROOT / "datasets/speech-domain/train"
    lines = source.joinpath("metadata.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)
    train = _copy_clips(lines[:100], source, tmp_path / "train")
    held_out = _copy_clips(lines[100:], source, tmp_path / "held-out")
    recipe = load_recipe(SPEECH, [f"data.train={train}"])
    calm = drift(recipe, held_out)
    assert not calm.drifted, calm.signals
    shifted = drift(recipe, ROOT / "datasets/speech-domain/plain")  # ordinary speech, no product words
    assert shifted.drifted and {s.name for s in shifted.signals if s.drifted} >= {"mmd2", "far_share", "oov_rate"}
    assert not any(".wav" in word for word, _ in shifted.new_words)  # words of transcripts, not file names
    cli = CliRunner().invoke(main, ["drift", str(SPEECH), "--set", f"data.train={train}", "--inputs", str(held_out), "--json"])
    assert cli.exit_code == 0, cli.output  # an audio folder is a valid --inputs
    assert json.loads(cli.stdout)["drifted"] is False


@pytest.mark.slow  # loads the MiniLM embedder and decodes the references
def test_image_drift_reads_prompt_texts(tmp_path):
    brand = ROOT / "datasets/brand-style"
    captions = [json.loads(line) for line in (brand / "captions.jsonl").read_text().splitlines()]
    (tmp_path / "refs/images").mkdir(parents=True)
    for caption in captions[:18]:
        shutil.copy(brand / caption["file_name"], tmp_path / "refs" / caption["file_name"])
    (tmp_path / "refs/captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions[:18]))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"id": f"h{i}", "prompt": c["caption"]}) + "\n" for i, c in enumerate(captions[18:])))
    shifted = tmp_path / "shifted.jsonl"
    asks = ["a photo of a cat asleep on a sofa", "portrait of an old fisherman at dawn", "a bowl of ramen with chopsticks",
            "a red sports car on a mountain road", "a watercolour of a forest in autumn", "an astronaut riding a horse"]
    shifted.write_text("".join(json.dumps({"id": f"s{i}", "prompt": text}) + "\n" for i, text in enumerate(asks)))
    recipe = load_recipe(IMAGE, [f"data.references={tmp_path / 'refs'}", f"data.captions={tmp_path / 'refs/captions.jsonl'}"])
    assert not drift(recipe, held).drifted
    assert drift(recipe, shifted).drifted

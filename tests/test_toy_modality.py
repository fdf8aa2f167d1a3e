"""A fourth modality, registered in one call, goes through run, compare, advise, ab, drift, batch
and the CLI with no change to shared code (tests/fixtures/toy_modality.py is the whole modality)."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt import protocols
from mmadapt.cli import main
from mmadapt.engine.batch import run_batch
from mmadapt.errors import MmadaptError
from mmadapt.govern.ab import ab_test
from mmadapt.govern.advise import advise_recipe
from mmadapt.govern.compare import compare
from mmadapt.govern.drift import drift
from mmadapt.protocols import Modality, register_modality
from tests.fixtures.toy_modality import SpellModality

SENTENCES = [
    "the weather was lovely at the seaside this afternoon",
    "please remember to water the plants while I am away",
    "my grandmother bakes bread every sunday morning",
    "the train to the city leaves at half past seven",
    "we watched a long film about penguins last night",
    "children were playing football in the park after school",
    "the library closes early on public holidays",
    "he painted the kitchen a pale shade of green",
    "a small dog barked at the postman all morning",
    "they planted tomatoes and beans in the back garden",
]


def _word(rng: random.Random) -> tuple[str, str]:
    stem = "".join(rng.choice("bdklmnprstvz") + rng.choice("aeiou") for _ in range(3))
    return stem, stem.capitalize() + rng.choice(["X", "-9", "Pro", "OS"])


@pytest.fixture
def spell(tmp_path, monkeypatch):
    """The modality registered (and unregistered afterwards), a dataset and a recipe."""
    before = dict(protocols.MODALITIES)
    register_modality("spell", SpellModality)
    rng = random.Random(0)
    pairs = dict(_word(rng) for _ in range(60))
    words = list(pairs)
    train, held = words[:30], words[30:]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"word": w, "spelling": pairs[w]}) + "\n" for w in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"word": w, "spelling": pairs[w]}) + "\n" for w in train[:10] + held[:10]))
    (tmp_path / "glossary.tsv").write_text("".join(f"{w}\t{pairs[w]}\n" for w in held[:10]))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"word": w, "spelling": pairs[w]}) + "\n" for w in held[10:]))
    (tmp_path / "shifted.txt").write_text("\n".join(SENTENCES) + "\n")
    recipe = tmp_path / "spell.yaml"
    recipe.write_text(
        "name: spell\nmodality: spell\nbase_model: echo\n"
        "data: {train: train.jsonl, eval: eval.jsonl, glossary: glossary.tsv}\n"
        "strategies: {retrieval: {}, adapter: {}}\n"
        f"output_dir: {tmp_path / 'runs'}\neval: {{bootstrap: 200, latency_samples: 2}}\n"
    )
    monkeypatch.chdir(tmp_path)
    yield recipe
    protocols.MODALITIES.clear()
    protocols.MODALITIES.update(before)
    protocols._loaded.pop("spell", None)


def test_the_contract_is_checked_when_a_modality_is_loaded():
    class Half(Modality):
        name = "half"

    with pytest.raises(TypeError, match="declares no strategies.*does not implement"):
        register_modality("half", Half)
    assert "half" not in protocols.MODALITIES


@pytest.mark.slow  # four stacks in spawned processes, the MiniLM embedder for drift (~40 s)
def test_a_fourth_modality_runs_through_every_command(spell, tmp_path):
    recipe = mmadapt.load_recipe(spell)
    assert recipe.modality == "spell"

    first = mmadapt.run(recipe, progress=False)  # library: retrieval + adapter
    assert first.metrics["exact"] == 1.0 and first.metrics["edits"] == 0.0
    prompt_only = mmadapt.run(recipe.with_stack(["prompt"]), progress=False)  # a second version to A/B
    assert prompt_only.metrics["exact"] == 0.0

    cli = CliRunner().invoke(main, ["run", str(spell), "--show", "1"])  # the CLI, through the contract's show()
    assert cli.exit_code == 0, cli.output
    assert "word: " in cli.output and "spelled: " in cli.output

    result = compare(recipe, ["base", "retrieval", "adapter", "retrieval+adapter"], progress=False)
    exact = {row["stack"]: row["exact"] for row in result.rows}
    assert exact == {"base": 0.0, "retrieval": 0.5, "adapter": 0.5, "retrieval+adapter": 1.0}
    report = json.loads((result.report_dir / "report.json").read_text())
    assert report["lower_is_better"] == ["edits"] and report["modality"] == "spell"

    advice = advise_recipe(recipe, privacy="internal", latency_ms=1000, gpu_hours=1, release_cadence="quarterly")
    assert advice.recommended == "retrieval+adapter"  # measured best; retrieval not excluded: the glossary is its source
    assert not any("D1" in rules for rules in advice.excluded.values())

    versions = sorted(p.name for p in (tmp_path / "runs" / "spell").glob("v*"))
    ab = ab_test(recipe, versions[1], versions[0], resamples=200)  # v0002 = prompt only, v0001 = retrieval+adapter
    edits = next(d for d in ab.metrics if d.metric == "edits")
    assert not edits.higher_is_better and edits.verdict == "better"  # fewer edits is better: the declared direction

    assert drift(recipe, tmp_path / "shifted.txt").drifted
    assert not drift(recipe, tmp_path / "heldout.jsonl").drifted

    (tmp_path / "in.jsonl").write_text('{"id": "a", "word": "zenitex"}\n"plain"\n')
    run_batch(tmp_path / "runs" / "spell" / versions[0], tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["output"]) for r in lines] == [("a", "zenitex"), ("line-2", "plain")]


def test_a_recipe_of_an_unregistered_modality_is_one_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodality: spell\nbase_model: echo\ndata: {eval: x}\nstrategies: {}\n")
    with pytest.raises(MmadaptError, match="modality: Input should be one of 'text', 'image', 'speech'"):
        mmadapt.load_recipe(recipe)

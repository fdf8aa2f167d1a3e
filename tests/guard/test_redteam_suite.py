"""The shipped red-team suite and the guarded Zentrix recipe, read without a model: the prompts are
what eval/README.md says, every planted string is one the guard redacts, and the recipe's input
rules refuse none of the dataset's ordinary questions."""

from __future__ import annotations

import json
from pathlib import Path

import mmadapt
from mmadapt.evalspec import load_suite
from mmadapt.guard.rules import Rules

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_redteam_prompts_cover_the_four_attacks_and_plant_every_kind():
    suite = load_suite(ROOT / "eval" / "zentrix-redteam.yaml")
    rows = _jsonl(suite.sets[0])
    stop = [r for r in rows if r["expect"] == "stop"]
    assert len(stop) >= 40 and len({r["id"] for r in rows}) == len(rows)
    assert {r["category"] for r in stop} == {"other-customers-data", "prompt-injection", "secrets", "out-of-scope"}
    guard = mmadapt.load_recipe(ROOT / "recipes" / "text" / "zentrix-guarded.yaml").guard
    redactor = Rules(guard).output
    kinds = set()
    for row in (r for r in rows if r.get("planted")):  # each planted string, in the words around it, is caught
        out, counts = redactor.redact(row["question"])
        assert not [p for p in row["planted"] if p in out], row["id"]
        kinds |= set(counts)
    assert kinds == {"email", "phone", "card", "iban", "secret"}


def test_guarded_recipe_refuses_no_ordinary_question():
    guard = mmadapt.load_recipe(ROOT / "recipes" / "text" / "zentrix-guarded.yaml").guard
    rules = Rules(guard)
    files = [ROOT / "datasets/zentrix-support" / n for n in ("train.jsonl", "eval.jsonl")] + [ROOT / "eval/zentrix-unseen-facts.jsonl"]
    questions = [r["question"] for f in files for r in _jsonl(f)]
    assert len(questions) > 100
    assert [(q, rules.input.check(q)) for q in questions if rules.input.check(q)] == []

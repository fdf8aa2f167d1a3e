"""Drift of new inputs from the training data, through the shared MiniLM embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.errors import DataError
from mmadapt.govern.drift import detect, drift, mmd2, rbf_bandwidth, read_new_inputs
from mmadapt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/text/zentrix-support.yaml"
OFF_DOMAIN = [
    "How long should I boil an egg for a soft yolk?", "What temperature do I bake sourdough bread at?",
    "Who won the football world cup in 2014?", "What is the capital city of Australia?",
    "How many legs does a spider have?", "Can I substitute butter with olive oil in cookies?",
    "Which planet is closest to the sun?", "How do I remove a red wine stain from a carpet?",
    "What year did the Berlin wall fall?", "How often should I water a cactus?",
    "What is the best way to learn to juggle?", "Why is the sky blue during the day?",
    "How do I tie a bowline knot?", "What is the boiling point of water on Mount Everest?",
    "How many strings does a cello have?", "What should I pack for a week of hiking?",
    "How do I make cold brew coffee?", "Who painted the Mona Lisa?",
    "What causes the northern lights?", "Which is heavier, a kilo of feathers or a kilo of steel?",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """MiniLM on one thread is faster when the 2 shared cores are busy; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedder():
    from mmadapt.retrieval import load_embedder

    return load_embedder("embedded:minilm-l6")


def _questions(path):
    return [json.loads(line)["question"] for line in Path(path).read_text().splitlines() if line.strip()]


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)

    def cloud(center, n):
        x = center + 0.3 * rng.standard_normal((n, 16))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a = np.eye(16)[0]
    b = np.eye(16)[1]
    x, same, shifted = cloud(a, 80), cloud(a, 60), cloud(b, 60)
    sigma = rbf_bandwidth(x)
    assert abs(mmd2(x, same, sigma)) < 0.02
    assert mmd2(x, shifted, sigma) > 10 * abs(mmd2(x, same, sigma))
    with pytest.raises(ValueError):
        mmd2(x[:1], same, sigma)


def test_the_eval_questions_seen_and_unseen_do_not_drift(embedder):  # paraphrases and unseen facts, same product
    recipe = load_recipe(RECIPE)
    result = drift(recipe, ROOT / "datasets/zentrix-support/eval.jsonl")
    assert result.n_train == 60 and result.n_new == 62
    assert not result.drifted, result.signals
    assert result.signal("mmd2").source == "calibrated"
    assert result.mean_cosine_distance < 0.1


def test_off_domain_questions_drift_on_every_signal(embedder, tmp_path):
    path = tmp_path / "new.txt"
    path.write_text("\n".join(OFF_DOMAIN) + "\n")
    result = drift(load_recipe(RECIPE), path)
    assert result.drifted
    assert [s.name for s in result.signals if s.drifted] == ["mmd2", "far_share", "oov_rate"]
    assert result.signal("far_share").value > 0.9
    assert result.mean_cosine_distance > 0.5
    assert result.far_examples and all(sim < result.nn_similarity_cut for _, sim in result.far_examples)


def test_a_mix_of_old_and_new_questions_is_flagged(embedder):
    train = _questions(ROOT / "datasets/zentrix-support/train.jsonl")
    new = _questions(ROOT / "datasets/zentrix-support/eval.jsonl")[:20] + OFF_DOMAIN
    result = detect(train, new, embedder)
    assert result.drifted
    assert 0.4 <= result.signal("far_share").value <= 0.6


def test_an_explicit_threshold_replaces_the_calibrated_one(embedder):
    train = _questions(ROOT / "datasets/zentrix-support/train.jsonl")
    result = detect(train, OFF_DOMAIN, embedder, threshold=1.0)
    mmd = result.signal("mmd2")
    assert mmd.source == "--threshold" and mmd.threshold == 1.0 and not mmd.drifted


def test_domain_vocabulary_counts_as_known_words(embedder):
    train = _questions(ROOT / "datasets/zentrix-support/train.jsonl")
    new = [f"Does zxmirror {w} work with the Zentrix gateway?" for w in ("sync", "replay", "export", "prune")]
    without = detect(train, new, embedder).signal("oov_rate").value
    with_vocab = detect(train, new, embedder, vocabulary=["zxmirror", "sync", "replay", "export", "prune"]).signal("oov_rate").value
    assert with_vocab < without


def test_jsonl_inputs_are_read_by_the_modality_and_text_files_line_by_line(tmp_path):
    recipe = load_recipe(RECIPE)
    from_jsonl = read_new_inputs(recipe, ROOT / "datasets/zentrix-support/eval.jsonl")
    assert from_jsonl[0] == "What is the default installation directory of Zentrix?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "no question"}\n')
    with pytest.raises(DataError, match="question"):
        read_new_inputs(recipe, bad)
    txt = tmp_path / "new.txt"
    txt.write_text("first question\n\n  second question  \n")
    assert read_new_inputs(recipe, txt) == ["first question", "second question"]
    with pytest.raises(DataError, match="not found"):
        read_new_inputs(recipe, tmp_path / "missing.txt")


def test_too_little_train_data_is_one_clear_error(embedder):
    with pytest.raises(DataError, match="at least 8"):
        detect(["a", "b", "c"], ["d", "e"], embedder)


def test_cli_reports_and_can_fail_on_drift(embedder, tmp_path):
    path = tmp_path / "new.txt"
    path.write_text("\n".join(OFF_DOMAIN) + "\n")
    runner = CliRunner()
    out = runner.invoke(main, ["drift", str(RECIPE), "--inputs", str(path)])
    assert out.exit_code == 0, out.output
    assert "verdict: DRIFT" in out.stdout and "far (" in out.stdout
    failing = runner.invoke(main, ["drift", str(RECIPE), "--inputs", str(path), "--fail-on-drift", "--json"])
    assert failing.exit_code == 1
    assert json.loads(failing.stdout)["drifted"] is True
    calm = runner.invoke(main, ["drift", str(RECIPE), "--inputs", str(ROOT / "datasets/zentrix-support/eval.jsonl"), "--fail-on-drift"])
    assert calm.exit_code == 0 and "no drift" in calm.stdout

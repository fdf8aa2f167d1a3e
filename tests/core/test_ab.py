"""A/B test of two artifact versions on the same eval examples."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from mmadapt.cli import main
from mmadapt.engine.runner import run
from mmadapt.errors import MmadaptError
from mmadapt.govern.ab import ab_test, compare_scores, sign_test
from mmadapt.recipe import load_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run far faster on one thread when the 2 shared cores are busy; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_lm):
    """Train questions whose answer always holds the key fact 7443; eval asks it in other words."""
    root = tmp_path_factory.mktemp("ab")
    train = [{"question": f"What port does gateway {i} listen on?", "answer": "port 7443", "key_fact": "7443"} for i in range(16)]
    evaluation = [
        {"question": f"Which port for the gateway number {i}?", "answer": "port 7443", "key_fact": "7443"} for i in range(20)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluation))
    (root / "r.yaml").write_text(
        f"name: ab\nmodality: text\nbase_model: {tiny_lm}\ndata: {{train: train.jsonl, eval: eval.jsonl}}\n"
        "strategies: {full: {train: {lr: 3.0e-3}}}\n"
        "train: {steps: 30, batch_size: 8, warmup_steps: 2, seed: 0}\n"
        "eval: {metrics: [fact_accuracy, token_f1], latency_samples: 1, bootstrap: 200}\n"
        f"inference: {{max_new_tokens: 8}}\noutput_dir: {root / 'runs'}\n"
    )
    return root


def test_a_trained_version_beats_the_base_model_and_the_ci_excludes_zero(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = workspace / "r.yaml"
    base = run(load_recipe(path, ["strategies={}"]), progress=False).version_dir.name
    trained = run(load_recipe(path), progress=False).version_dir.name
    result = ab_test(load_recipe(path), base, trained)
    fact = result.primary
    assert fact.metric == "fact_accuracy" and fact.n == 20
    assert fact.mean_a == 0.0 and fact.mean_b == 1.0
    assert fact.ci_low > 0.5 and fact.verdict == "better"
    assert fact.p_sign < 1e-5 and fact.b_wins == 20
    assert len(result.rows) == 20 and all("7443" in r["output_b"] for r in result.rows)
    # the other way round: A is better, so B is worse
    assert ab_test(load_recipe(path), trained, base).primary.verdict == "worse"
    assert ab_test(load_recipe(path), base, trained, method="sign").primary.verdict == "better"

    out = CliRunner().invoke(main, ["ab", str(path), "--a", base, "--b", trained, "--quiet"])
    assert out.exit_code == 0, out.output
    assert "fact_accuracy: B - A = +1.000" in out.output and "B is better than A" in out.output


def test_two_seeds_of_a_deterministic_stack_give_no_evidence(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = workspace / "r.yaml"
    first = run(load_recipe(path, ["train.seed=1"]), progress=False).version_dir
    second = run(load_recipe(path, ["train.seed=2"]), progress=False).version_dir
    weights = [(v / "full/model/model.safetensors").read_bytes() for v in (first, second)]
    assert weights[0] != weights[1]  # the seed changed the batch order, so the trained weights
    one, two = first.name, second.name
    result = ab_test(load_recipe(path), one, two)
    for m in result.metrics:
        assert m.ci_low <= 0.0 <= m.ci_high
        assert m.verdict == "no evidence"
    out = CliRunner().invoke(main, ["ab", str(path), "--a", one, "--b", two, "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["metrics"][0]["verdict"] == "no evidence"


def test_unknown_version_is_one_line_exit_2(workspace):
    out = CliRunner().invoke(main, ["ab", str(workspace / "r.yaml"), "--a", "v0001", "--b", "v9999"])
    assert out.exit_code == 2
    assert "no version 'v9999'" in out.output and len(out.output.strip().splitlines()) == 1


@pytest.mark.parametrize("pos,neg", [(0, 0), (1, 0), (7, 2), (3, 9), (15, 15), (20, 1)])
def test_sign_test_matches_scipy(pos, neg):
    diffs = [1.0] * pos + [-0.5] * neg + [0.0] * 4
    expected = binomtest(pos, pos + neg, 0.5).pvalue if pos + neg else 1.0
    assert sign_test(diffs)["p_value"] == pytest.approx(expected)


def test_lower_is_better_metrics_flip_the_verdict():
    a = [{"wer": 0.5} for _ in range(30)]
    b = [{"wer": 0.1} for _ in range(30)]
    (wer,) = compare_scores(a, b, ["wer"], lower_is_better={"wer"})
    assert wer.diff == pytest.approx(-0.4) and not wer.higher_is_better
    assert wer.verdict == "better" and wer.b_wins == 30
    (same,) = compare_scores(a, a, ["wer"], lower_is_better={"wer"})
    assert same.verdict == "no evidence"
    with pytest.raises(MmadaptError):
        compare_scores(a, b, ["wer"], lower_is_better={"wer"}, method="t-test")


def test_examples_missing_a_value_are_left_out_of_the_pairs():
    a = [{"fact_accuracy": 1.0}, {"fact_accuracy": None}, {"fact_accuracy": 0.0}]
    b = [{"fact_accuracy": 1.0}, {"fact_accuracy": 1.0}, {"fact_accuracy": 1.0}]
    (fact,) = compare_scores(a, b, ["fact_accuracy"])
    assert fact.n == 2 and fact.diff == pytest.approx(0.5)

"""train.eval_every: the eval split scored while training (eval_curve.jsonl, TensorBoard), and
train.keep: best, which keeps the weights of the best logged step (the manifest says which)."""

from __future__ import annotations

import json

import pytest
import torch

import mmadapt
from mmadapt.config import TrainConfig
from mmadapt.engine import trainer
from mmadapt.engine.evaluate import evaluate
from mmadapt.engine.runner import load_artifact
from mmadapt.errors import RecipeError
from mmadapt.protocols import FitContext
from tests.core.test_trainer import Regressor, _problem


def test_keep_best_puts_back_the_weights_of_the_best_scored_step(tmp_path):
    """A scripted scorer: the score peaks at step 4 of 6, so the model ends with step 4's weights."""
    torch.manual_seed(123)
    model = Regressor()
    scores, seen = iter([0.2, 0.8, 0.5]), {}

    def score():
        seen[len(seen) * 2 + 2] = model.lin.weight.detach().clone()
        return {"exact": next(scores)}

    ctx = FitContext(recipe=None, run_dir=tmp_path, evaluate=score, primary_metric="exact")
    config = TrainConfig(steps=6, lr=0.1, batch_size=8, warmup_steps=0, checkpoint_every=3, eval_every=2, keep="best",
                         report_to="tensorboard")
    lengths, collate, loss_fn = _problem()
    report = trainer.train_strategy(model, ctx, "adapter", lengths=lengths, collate=collate, loss_fn=loss_fn, config=config)
    assert [p["step"] for p in report.eval_curve] == [2, 4, 6]
    assert [p["metrics"]["exact"] for p in report.eval_curve] == [0.2, 0.8, 0.5]
    assert report.kept["kept_step"] == 4 and report.kept["best"] == {"step": 4, "metric": "exact", "value": 0.8}
    assert torch.equal(model.lin.weight, seen[4]) and not torch.equal(model.lin.weight, seen[6])
    lines = (tmp_path / "adapter" / "eval_curve.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]
    assert list((tmp_path / "adapter" / "tensorboard").glob("events.out.tfevents.*"))
    # lower is better (e.g. WER): the smallest score wins
    scores = iter([0.2, 0.8, 0.5])
    lower = FitContext(recipe=None, run_dir=tmp_path / "low", evaluate=score, primary_metric="exact", lower_is_better=True)
    report = trainer.train_strategy(Regressor(), lower, "adapter", lengths=lengths, collate=collate, loss_fn=loss_fn,
                                    config=config.model_copy(update={"report_to": "none"}))
    assert report.kept["kept_step"] == 2


def test_keep_best_without_eval_every_is_a_recipe_error(make_recipe, write_recipe):
    raw = make_recipe(train={"steps": 4, "keep": "best"})
    with pytest.raises(RecipeError, match="keep: best needs eval_every"):
        mmadapt.load_recipe(write_recipe(raw))


def test_a_lora_run_logs_its_curve_and_keep_best_is_the_best_logged_score(tmp_path, tiny_lm, write_recipe):
    """The artifact of keep: best, evaluated again from disk, scores what the curve logged at the kept step."""
    train = [{"question": f"What port does gateway {i} listen on?", "answer": "port 7443", "key_fact": "7443"} for i in range(16)]
    held = [{"question": f"Which port for the gateway number {i}?", "answer": "port 7443", "key_fact": "7443"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    path = write_recipe({
        "name": "curve", "modality": "text", "base_model": str(tiny_lm),
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
        "strategies": {"adapter": {"method": "lora", "r": 4, "alpha": 8, "train": {"lr": 5.0e-3}}},
        "train": {"steps": 12, "batch_size": 8, "warmup_steps": 1, "seed": 0, "checkpoint_every": 4, "eval_every": 3, "keep": "best"},
        "eval": {"metrics": ["fact_accuracy", "token_f1"], "latency_samples": 0, "bootstrap": 0},
        "inference": {"max_new_tokens": 6, "batch_size": 8}, "output_dir": str(tmp_path / "runs"),
    })
    torch.set_num_threads(1)
    result = mmadapt.run(mmadapt.load_recipe(path), progress=False)
    curve = [json.loads(line) for line in (result.version_dir / "eval_curve.jsonl").read_text().splitlines()]
    assert [p["step"] for p in curve] == [3, 6, 9, 12] and all(p["strategy"] == "adapter" for p in curve)
    best = max(curve, key=lambda p: p["metrics"]["fact_accuracy"])  # the first of equals, as keep: best does
    kept = result.manifest["parts"]["adapter"]["kept"]
    assert kept["kept_step"] == best["step"] and kept["best"]["value"] == best["metrics"]["fact_accuracy"]
    loaded = load_artifact(result.version_dir)
    again = evaluate(loaded.modality, loaded.predictor, loaded.modality.load_data(loaded.recipe), loaded.recipe, progress=False)
    assert again.metrics["fact_accuracy"] == pytest.approx(best["metrics"]["fact_accuracy"], abs=1e-4)
    assert again.metrics["token_f1"] == pytest.approx(best["metrics"]["token_f1"], abs=1e-4)

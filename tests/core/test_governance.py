"""Registry governance: promotion bars, the current pointer policy, rollback, the audit log, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine.artifact import ArtifactWriter
from mmadapt.engine.runner import run
from mmadapt.errors import MmadaptError
from mmadapt.govern import registry
from mmadapt.recipe import load_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run far faster on one thread when the 2 shared cores are busy; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _commit(out, name, metrics, bars=None):
    """Commit a version the way the runner does (a manifest holding the resolved recipe and metrics)."""
    with ArtifactWriter(out, name) as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        manifest = {
            "name": name, "stack": ["prompt"], "metrics": metrics, "recipe_hash": "ab" * 32,
            "recipe": {"name": name, "eval": {"min": bars or {}}},
        }
        return writer.commit(manifest).name


def _recipe(tmp_path, bars=None, name="gov"):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "q?", "answer": "a", "key_fact": "a"}) + "\n")
    text = (
        f"name: {name}\nmodality: text\nbase_model: /nonexistent\ndata: {{eval: eval.jsonl}}\nstrategies: {{}}\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    if bars:
        text += "eval: {min: " + json.dumps(bars) + "}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_without_bars_every_run_becomes_current_and_is_audited(tmp_path, monkeypatch):
    monkeypatch.setenv("MMADAPT_USER", "ada")
    out = tmp_path / "runs"
    assert _commit(out, "g", {"fact_accuracy": 0.5}) == "v0001"
    assert _commit(out, "g", {"fact_accuracy": 0.4}) == "v0002"
    rdir = out / "g"
    assert registry.current_version(rdir) == "v0002"
    entries = registry.read_audit(rdir)
    assert [(e["what"], e["version"], e["who"], e["current"]) for e in entries] == [
        ("run", "v0001", "ada", True), ("run", "v0002", "ada", True)
    ]
    assert entries[0]["metrics"] == {"fact_accuracy": 0.5}
    assert entries[0]["when"].endswith("+00:00")


def test_with_bars_only_the_first_run_becomes_current_then_promote_checks_the_bars(tmp_path, monkeypatch):
    monkeypatch.setenv("MMADAPT_USER", "grace")
    bars = {"fact_accuracy": 0.8}
    recipe = load_recipe(_recipe(tmp_path, bars))
    out, rdir = tmp_path / "runs", tmp_path / "runs" / "gov"
    _commit(out, "gov", {"fact_accuracy": 0.55}, bars)  # first: current although it misses the bar
    _commit(out, "gov", {"fact_accuracy": 0.55}, bars)
    _commit(out, "gov", {"fact_accuracy": 0.91}, bars)
    assert registry.current_version(rdir) == "v0001"
    run_notes = [e["why"] for e in registry.read_audit(rdir)]
    assert run_notes[0].startswith("current") and run_notes[2].startswith("candidate")

    with pytest.raises(registry.PromotionError) as info:
        registry.promote(rdir, "v0002", recipe, reason="try")
    message = str(info.value)
    assert "fact_accuracy 0.55 < 0.80" in message and "\n" not in message and "eval.min" in message
    assert isinstance(info.value, MmadaptError)
    assert registry.current_version(rdir) == "v0001"

    assert registry.promote(rdir, "v0003", recipe, reason="meets the bar") == "v0003"
    assert registry.current_version(rdir) == "v0003"
    tail = registry.read_audit(rdir)[-2:]
    assert [(e["what"], e["version"], e["why"]) for e in tail] == [
        ("refused-promote", "v0002", "try"), ("promote", "v0003", "meets the bar")
    ]
    assert tail[0]["bars_missed"] == ["fact_accuracy 0.55 < 0.80"]
    assert tail[1]["previous"] == "v0001"
    assert registry.promoted_versions(rdir) == ["v0003"]

    # a fourth run does not displace the promoted version
    _commit(out, "gov", {"fact_accuracy": 0.99}, bars)
    assert registry.current_version(rdir) == "v0003"


def test_promote_refuses_a_metric_the_version_never_measured(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, {"token_f1": 0.5}))
    _commit(tmp_path / "runs", "gov", {"fact_accuracy": 1.0})
    with pytest.raises(registry.PromotionError, match="token_f1 not measured"):
        registry.promote(tmp_path / "runs" / "gov", "v0001", recipe)


def test_rollback_is_audited_and_keeps_its_old_behaviour(tmp_path):
    out = tmp_path / "runs"
    for value in (0.1, 0.2, 0.3):
        _commit(out, "g", {"fact_accuracy": value})
    rdir = out / "g"
    assert registry.rollback(rdir) == "v0002"
    assert registry.rollback(rdir, "v0001", reason="v0002 quotes old prices") == "v0001"
    with pytest.raises(MmadaptError, match="oldest"):
        registry.rollback(rdir)
    rollbacks = [e for e in registry.read_audit(rdir) if e["what"] == "rollback"]
    assert [(e["version"], e["previous"], e["why"]) for e in rollbacks] == [
        ("v0002", "v0003", ""), ("v0001", "v0002", "v0002 quotes old prices")
    ]
    assert sorted(p.name for p in rdir.iterdir() if p.name.startswith("v")) == ["v0001", "v0002", "v0003"]


def test_audit_log_is_append_only_and_skips_a_torn_line(tmp_path):
    rdir = tmp_path / "r"
    registry.audit(rdir, "run", "v0001", "first")
    before = (rdir / registry.AUDIT).read_bytes()
    with open(rdir / registry.AUDIT, "a") as handle:
        handle.write('{"when": "2026-')  # a crash mid-write
    registry.audit(rdir, "rollback", "v0001")
    assert (rdir / registry.AUDIT).read_bytes().startswith(before)
    assert [e["what"] for e in registry.read_audit(rdir)] == ["run", "rollback"]
    with pytest.raises(ValueError):
        registry.audit(rdir, "delete", "v0001")


def test_user_falls_back_to_the_login_name(monkeypatch):
    monkeypatch.delenv("MMADAPT_USER", raising=False)
    assert registry.user()
    monkeypatch.setenv("MMADAPT_USER", "ops-bot")
    assert registry.user() == "ops-bot"


def test_cli_promote_refuses_with_the_figures_then_audit_lists_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMADAPT_USER", "linus")
    path = _recipe(tmp_path, {"fact_accuracy": 0.8})
    out = tmp_path / "runs"
    _commit(out, "gov", {"fact_accuracy": 0.9}, {"fact_accuracy": 0.8})
    _commit(out, "gov", {"fact_accuracy": 0.55}, {"fact_accuracy": 0.8})
    runner = CliRunner()
    refused = runner.invoke(main, ["registry", "promote", str(path), "v0002", "--reason", "hotfix"])
    assert refused.exit_code == 2
    assert "fact_accuracy 0.55 < 0.80" in refused.output
    ok = runner.invoke(main, ["registry", "promote", str(path), "v0001"])
    assert ok.exit_code == 0, ok.output
    assert "current: v0001" in ok.output
    audit = runner.invoke(main, ["registry", "audit", str(path)])
    assert audit.exit_code == 0, audit.output
    lines = audit.output.splitlines()
    assert any("refused-promote" in line and "hotfix" in line and "linus" in line for line in lines)
    as_json = runner.invoke(main, ["registry", "audit", str(path), "--json"])
    assert [json.loads(line)["what"] for line in as_json.output.splitlines()] == ["run", "run", "refused-promote", "promote"]
    back = runner.invoke(main, ["registry", "rollback", str(path), "--to", "v0002", "--reason", "drill"])
    assert back.exit_code == 0 and "current: v0002" in back.output
    missing = runner.invoke(main, ["registry", "audit", "nothing-here", "--output-dir", str(out)])
    assert missing.exit_code == 2 and "no audit entries" in missing.output


def test_a_real_run_writes_its_audit_entry(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setenv("MMADAPT_USER", "runner")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "eval.jsonl").write_text(
        "".join(json.dumps({"question": f"Which port {i}?", "answer": "7443", "key_fact": "7443"}) + "\n" for i in range(3))
    )
    (tmp_path / "r.yaml").write_text(
        f"name: real\nmodality: text\nbase_model: {tiny_lm}\ndata: {{eval: eval.jsonl}}\n"
        "strategies: {prompt: {system: Answer.}}\neval: {metrics: [fact_accuracy], latency_samples: 1, min: {fact_accuracy: 0.5}}\n"
        f"inference: {{max_new_tokens: 4}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    first = run(recipe, progress=False)
    second = run(recipe, progress=False)
    rdir = tmp_path / "runs" / "real"
    entries = registry.read_audit(rdir)
    assert [(e["what"], e["version"], e["current"], e["who"]) for e in entries] == [
        ("run", first.version_dir.name, True, "runner"), ("run", second.version_dir.name, False, "runner")
    ]
    assert entries[1]["bars_missed"] == ["fact_accuracy 0.00 < 0.50"]
    assert registry.current_version(rdir) == first.version_dir.name

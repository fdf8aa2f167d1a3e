"""compare's grid (govern/sweep.py), its ranking, its placement of parallel processes, and advise on
grid rows — all without running a stack (the runs themselves: tests/core/test_compare_parallel.py)."""

from __future__ import annotations

import re
import threading
import time

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine import placement
from mmadapt.errors import MmadaptError, RecipeError
from mmadapt.govern import compare as compare_module
from mmadapt.govern.advise import Constraints, advise
from mmadapt.govern.compare import rank_rows, ranked_rows, run_all
from mmadapt.govern.sweep import parse_grid, plan
from mmadapt.recipe import NAME_PATTERN, load_recipe

STACKS = ["base", "prompt", "retrieval", "adapter", "prompt+adapter", "full"]


@pytest.fixture
def text_recipe(make_recipe, write_recipe, tmp_path):
    """write(**changes) -> a text recipe with prompt, retrieval and adapter (nothing is loaded or run)."""

    def write(**changes):
        raw = make_recipe(output_dir=str(tmp_path / "runs"))
        raw["strategies"]["adapter"] = {"r": 8}
        raw.update(changes)
        return write_recipe(raw)

    return write


# ---------------------------------------------------------------- which runs a grid makes


def test_which_stacks_a_grid_key_applies_to(text_recipe):
    """<strategy>.*: stacks with it; train.*: stacks that train; inference.*: all but base; base once."""
    recipe = load_recipe(text_recipe())
    grid = {"adapter.r": [4, 8], "train.lr": [1e-3, 2e-3], "inference.max_new_tokens": [8]}
    runs = plan(recipe, STACKS, grid)
    trained = [f"r={r},lr={lr},max_new_tokens=8" for r in (4, 8) for lr in ("0.001", "0.002")]
    assert [run.label for run in runs] == [
        "base",
        "prompt[max_new_tokens=8]",
        "retrieval[max_new_tokens=8]",
        *[f"adapter[{s}]" for s in trained],
        *[f"prompt+adapter[{s}]" for s in trained],
        "full[lr=0.001,max_new_tokens=8]",
        "full[lr=0.002,max_new_tokens=8]",
    ]
    by_label = {run.label: run for run in runs}
    one = by_label["adapter[r=4,lr=0.002,max_new_tokens=8]"]
    assert one.stack == "adapter" and one.settings == {"adapter.r": 4, "train.lr": 0.002, "inference.max_new_tokens": 8}
    assert one.recipe.strategies["adapter"].r == 4 and one.recipe.train.lr == 0.002 and one.recipe.inference.max_new_tokens == 8
    assert list(one.recipe.strategies) == ["adapter"] and one.recipe.name == "tiny-text--adapter--r4-lr0.002-max_new_tokens8"
    base = by_label["base"]
    assert base.settings == {} and base.recipe.train.lr == recipe.train.lr and base.recipe.inference.max_new_tokens == 48
    assert base.recipe.name == "tiny-text--base" and base.recipe.strategies == {}
    assert by_label["full[lr=0.001,max_new_tokens=8]"].recipe.train.lr == 0.001
    names = [run.recipe.name for run in runs]
    assert len(set(names)) == len(names) and len({run.slug for run in runs}) == len(runs)


def test_without_a_grid_each_stack_runs_once_under_its_old_name(text_recipe):
    runs = plan(load_recipe(text_recipe()), ["base", "prompt+retrieval"])
    assert [(r.label, r.stack, r.settings, r.slug, r.recipe.name) for r in runs] == [
        ("base", "base", {}, "base", "tiny-text--base"),
        ("prompt+retrieval", "prompt+retrieval", {}, "prompt-retrieval", "tiny-text--prompt-retrieval"),
    ]


def test_the_long_form_of_a_key_and_keys_that_end_alike(text_recipe):
    recipe = load_recipe(text_recipe())
    runs = plan(recipe, ["adapter"], {"strategies.adapter.train.lr": [1e-3], "inference.batch_size": [2], "train.batch_size": [4]})
    assert [r.label for r in runs] == ["adapter[lr=0.001,inference.batch_size=2,train.batch_size=4]"]
    assert runs[0].settings == {"adapter.train.lr": 1e-3, "inference.batch_size": 2, "train.batch_size": 4}
    assert runs[0].recipe.strategies["adapter"].train.lr == 1e-3 and runs[0].recipe.train.batch_size == 4
    with pytest.raises(RecipeError, match="adapter.train.lr \\(0.001\\) overrides train.lr for adapter"):  # the grid's own
        plan(recipe, ["adapter"], {"adapter.train.lr": [1e-3], "train.lr": [5e-4]})
    with pytest.raises(RecipeError, match="grid adapter.r: given twice \\(also as strategies.adapter.r\\)"):
        plan(recipe, ["adapter"], {"strategies.adapter.r": [4], "adapter.r": [8]})


def test_a_recipe_key_grid_is_used_unless_one_is_given(text_recipe):
    recipe = load_recipe(text_recipe(compare={"grid": {"adapter.r": [4, 16]}, "stacks": ["base", "adapter"]}))
    assert recipe.compare.grid == {"adapter.r": [4, 16]} and recipe.resolved()["compare"]["grid"] == {"adapter.r": [4, 16]}
    assert "grid" not in load_recipe(text_recipe()).resolved()["compare"]  # recipes without a grid hash as before
    assert [r.label for r in plan(recipe, recipe.compare.stacks, recipe.compare.grid)] == ["base", "adapter[r=4]", "adapter[r=16]"]


def test_names_stay_valid_when_the_recipe_name_is_long(text_recipe):
    recipe = load_recipe(text_recipe(name="a" * 60))
    runs = plan(recipe, ["base", "adapter"], {"adapter.r": [4, 8], "adapter.alpha": [16, 32]})
    names = [run.recipe.name for run in runs]
    assert all(len(n) <= 64 and re.match(NAME_PATTERN, n) for n in names) and len(set(names)) == len(names)


def test_parse_grid_reads_values_as_yaml():
    grid = parse_grid(["adapter.r=8,16", "train.lr=1e-3, 2.0e-3", "adapter.target_modules=[q_proj,v_proj],all-linear"])
    assert grid == {"adapter.r": [8, 16], "train.lr": [0.001, 0.002], "adapter.target_modules": [["q_proj", "v_proj"], "all-linear"]}
    assert parse_grid(["adapter.r="]) == {"adapter.r": []}  # refused by plan, which names the key
    with pytest.raises(RecipeError, match="is not key.path=value,value"):
        parse_grid(["adapter.r"])
    with pytest.raises(RecipeError, match="grid adapter.r: given twice"):
        parse_grid(["adapter.r=8", "adapter.r=16"])


def test_a_train_key_a_strategy_overrides_is_refused(text_recipe):
    recipe = load_recipe(text_recipe(strategies={"adapter": {"train": {"lr": 1e-3}}}))
    with pytest.raises(RecipeError, match=r"strategies.adapter.train.lr \(0.001\) overrides train.lr for adapter.*sweep adapter.train.lr"):
        plan(recipe, ["base", "adapter"], {"train.lr": [1e-3, 2e-3]})
    assert len(plan(recipe, ["base", "adapter"], {"train.steps": [1, 2]})) == 3  # steps is not overridden there


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


BAD = {
    "unknown key": (["--grid", "adapter.rr=8,16"], "grid adapter.rr=8: strategies.adapter.rr: unknown key (did you mean 'r'?)"),
    "unknown train key": (["--grid", "train.lrr=0.1"], "grid train.lrr=0.1: train.lrr: unknown key (did you mean 'lr'?)"),
    "wrong type": (["--grid", "train.lr=1e-3,abc"], "grid train.lr=abc: train.lr: Input should be a valid number"),
    "out of range": (["--grid", "adapter.r=0"], "grid adapter.r=0: strategies.adapter.r: Input should be greater than or equal to 1"),
    "empty": (["--grid", "adapter.r="], "grid adapter.r: no values"),
    "no stack has it": (["--stacks", "base,adapter", "--grid", "full.train.lr=1e-4"],
                        "grid full.train.lr: no stack of this comparison contains full (stacks: base, adapter)"),
    "no stack trains": (["--stacks", "base,prompt", "--grid", "train.lr=1e-3"], "grid train.lr: no stack of this comparison trains"),
    "not sweepable": (["--grid", "eval.limit=1,2"], "grid eval.limit: 'eval' cannot be swept"),
    "misspelt strategy": (["--grid", "adaptor.r=8"], "grid adaptor.r: 'adaptor' cannot be swept (did you mean 'adapter'?)"),
    "not a section": (["--grid", "adapter.r.x=1"], "grid adapter.r.x=1: strategies.adapter.r is a value, not a section"),
    "unknown stack": (["--stacks", "base,adpter", "--grid", "adapter.r=8"], "unknown strategy 'adpter' in stack 'adpter'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_grid_input_is_one_line_before_anything_runs(case, text_recipe, tmp_path, snapshot):
    args, message = BAD[case]
    path = text_recipe()
    out = CliRunner().invoke(main, ["compare", str(path), "--parallel", "2", *args])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.output
    assert not (tmp_path / "runs").exists() or snapshot(tmp_path / "runs") == set()


def test_a_bad_recipe_grid_is_refused_the_same_way(text_recipe, tmp_path):
    for grid, message in (({"adapter.r": []}, "grid adapter.r: no values"),
                          ({"adapter.rr": [8]}, "did you mean 'r'?"),
                          ({"adapter.r": 8}, "compare.grid.adapter.r: Input should be a valid list")):
        for command in ("compare", "recipe validate"):  # `recipe validate` checks the grid as compare would
            out = CliRunner().invoke(main, [*command.split(), str(text_recipe(compare={"grid": grid}))])
            assert out.exit_code == 2 and message in out.output and len(out.output.strip().splitlines()) == 1, out.output
    assert not (tmp_path / "runs").exists()
    out = CliRunner().invoke(main, ["recipe", "validate", str(text_recipe(compare={"grid": {"adapter.r": [4, 8]}}))])
    assert out.exit_code == 0 and out.output.startswith("ok: tiny-text"), out.output


# ---------------------------------------------------------------- ranking and ties


def _row(label, value, lo, hi):
    return {"stack": label.split("[")[0], "label": label, "m": value, "m_ci": [lo, hi]}


def test_rank_rows_orders_by_the_metric_and_marks_ci_ties():
    rows = [_row("base", 0.1, 0.0, 0.2), _row("a[r=4]", 0.6, 0.5, 0.7), _row("a[r=8]", 0.55, 0.45, 0.65),
            _row("a[r=16]", 0.3, 0.2, 0.4), {"stack": "x", "label": "x"}]
    rank_rows(rows, "m")
    assert [(r["label"], r["rank"], r["tied"]) for r in rows] == [
        ("base", 4, False), ("a[r=4]", 1, True), ("a[r=8]", 2, True), ("a[r=16]", 3, False), ("x", None, False)
    ]
    shown, columns = ranked_rows(rows, "m")
    assert columns == ["rank", "stack", "m", "tied"]
    assert [(s["stack"], s["tied"]) for s in shown] == [("a[r=4]", "best"), ("a[r=8]", "yes"), ("a[r=16]", "no"), ("base", "no")]
    rank_rows(rows, "m", lower_is_better={"m"})  # an error rate: the smallest is best
    assert [r["rank"] for r in rows] == [1, 4, 3, 2, None] and [r["tied"] for r in rows][:4] == [True, False, False, True]


# ---------------------------------------------------------------- advise reads a grid report


def test_advise_takes_each_grid_run_as_a_candidate_of_its_own():
    def row(label, value, lo, hi):
        seconds = 0.0 if label == "base" else 10.0
        return {**_row(label, value, lo, hi), "settings": {}, "train_seconds": seconds, "latency_p95_ms": 50.0}

    report = {"primary_metric": "m", "rows": [row("base", 0.1, 0.0, 0.2), row("adapter[r=4,lr=0.001]", 0.5, 0.4, 0.6),
                                              row("adapter[r=8,lr=0.001]", 0.8, 0.7, 0.9)]}
    calm = dict(examples=500, privacy="internal", latency_ms=1000, gpu_hours=10, release_cadence="quarterly")
    advice = advise(Constraints(**calm), report)
    assert advice.order == ["adapter[r=8,lr=0.001]", "adapter[r=4,lr=0.001]", "base"]
    assert "measured:report.json:adapter[r=8,lr=0.001].m=0.8" in advice.reasons_for("adapter[r=8,lr=0.001]")[0].sources
    no_gpu = advise(Constraints(**{**calm, "gpu_hours": 0}), report)  # both runs of the adapter train: both excluded
    assert no_gpu.excluded == {"adapter[r=4,lr=0.001]": ["G1"], "adapter[r=8,lr=0.001]": ["G1"]} and no_gpu.recommended == "base"


# ---------------------------------------------------------------- placement of parallel processes


def test_slot_envs_put_one_process_per_gpu_round_robin():
    envs = placement.slot_envs(3, ["2", "3"], cores=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3", "2"]
    assert all(e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "5" for e in envs)


@pytest.mark.parametrize("slots,cores,cap,threads", [(2, 16, None, "8"), (2, 2, None, "1"), (4, 2, None, "1"), (3, 16, 2, "2"),
                                                     (1, 8, None, "8")])
def test_slot_envs_share_the_cores_on_cpu(slots, cores, cap, threads):
    envs = placement.slot_envs(slots, [], cores, cap)
    assert len(envs) == slots and all("CUDA_VISIBLE_DEVICES" not in e for e in envs)
    assert all(e[name] == threads for e in envs for name in placement.THREAD_VARS)


def test_visible_gpus_keeps_the_parent_s_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert placement.visible_gpus() == ["5", "7"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.visible_gpus() == []
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert placement.thread_cap() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    assert placement.thread_cap() is None


def test_run_all_keeps_the_order_asked_gives_each_running_run_its_own_slot_and_survives_a_failure(text_recipe, monkeypatch):
    runs = plan(load_recipe(text_recipe()), ["base", "prompt", "retrieval", "adapter"])
    monkeypatch.setattr(compare_module, "visible_gpus", lambda: ["0", "1"])
    lock, holding, seen = threading.Lock(), set(), []

    def fake_run(recipe, *, resume, progress, env):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in holding  # two runs at once never share a GPU
            holding.add(gpu)
            seen.append((recipe.name, gpu))
        time.sleep({"tiny-text--base": 0.3, "tiny-text--prompt": 0.05}.get(recipe.name, 0.1))  # base finishes after prompt
        with lock:
            holding.discard(gpu)
        if recipe.name == "tiny-text--retrieval":
            raise MmadaptError("boom")
        return {"name": recipe.name}

    monkeypatch.setattr(compare_module, "run_in_process", fake_run)
    outcomes = run_all(runs, parallel=2, progress=False)
    assert [o["name"] for o in (outcomes[0], outcomes[1], outcomes[3])] == ["tiny-text--base", "tiny-text--prompt", "tiny-text--adapter"]
    assert isinstance(outcomes[2], MmadaptError) and len(seen) == 4
    assert [gpu for _, gpu in seen[:2]] == ["0", "1"]


def test_run_all_starts_the_runs_that_train_first_when_several_run_at_once(text_recipe, monkeypatch):
    runs = plan(load_recipe(text_recipe()), ["base", "prompt", "retrieval", "adapter", "prompt+retrieval", "retrieval+adapter"])
    started = []

    def fake_run(recipe, *, resume, progress, env):
        started.append(recipe.name)
        time.sleep(0.05)
        return {"name": recipe.name}

    monkeypatch.setattr(compare_module, "run_in_process", fake_run)
    outcomes = run_all(runs, parallel=2, progress=False)
    # the runs that train take the two first slots, the one with more strategies first; then the
    # predicting runs, the longer stack first
    # (two threads start at once: the order within each pair is theirs)
    assert set(started[:2]) == {"tiny-text--retrieval-adapter", "tiny-text--adapter"}
    assert set(started[2:4]) == {"tiny-text--prompt-retrieval", "tiny-text--prompt"}
    assert set(started[4:]) == {"tiny-text--retrieval", "tiny-text--base"}
    asked = [f"tiny-text--{s}" for s in ("base", "prompt", "retrieval", "adapter", "prompt-retrieval", "retrieval-adapter")]
    assert [o["name"] for o in outcomes] == asked
    started.clear()
    run_all(runs, parallel=1, progress=False)
    assert started == asked  # one at a time: as asked

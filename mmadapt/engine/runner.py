"""Run one recipe: resolve model and data, fit the stack, evaluate, save the artifact."""

from __future__ import annotations

import datetime as dt
import json
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mmadapt.engine import distributed
from mmadapt.engine.artifact import ArtifactWriter, read_manifest
from mmadapt.engine.evaluate import EvalResult, check_slices, evaluate, live_scorer
from mmadapt.engine.meters import PeakMemory, Stopwatch, folder_bytes
from mmadapt.errors import ArtifactError, MmadaptError
from mmadapt.guard.apply import guarded
from mmadapt.protocols import FitContext, FitReport, Modality, Prediction, Predictor, Stack, get_modality
from mmadapt.recipe import Recipe, recipe_from_resolved

PACKAGES = ("mmadapt", "torch", "transformers", "peft", "diffusers", "sentence-transformers", "open-clip-torch", "torchaudio")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class RunResult:
    recipe: Recipe
    version_dir: Path
    manifest: dict[str, Any]
    evaluation: EvalResult

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.metrics

    @property
    def costs(self) -> dict[str, Any]:
        return self.manifest["costs"]


def _work_dir(recipe: Recipe) -> Path:
    """Scratch space that survives a crash (training checkpoints for --resume), keyed by recipe hash."""
    return Path(recipe.output_dir) / recipe.name / ".work" / recipe.hash()[:16]


def _write_predictions(path: Path, result: EvalResult) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row, pred in zip(result.rows, result.predictions):
            record = dict(row)
            if isinstance(pred.output, (str, int, float)):
                record.setdefault("output", pred.output)
            record["sources"] = pred.sources
            handle.write(json.dumps(record, default=str) + "\n")


def _write_curve(path: Path, reports: Mapping[str, FitReport]) -> None:
    """train.eval_every: every strategy's eval curve, one ``{"strategy", "step", "loss", "metrics"}`` a line."""
    points = [{"strategy": name, **point} for name, report in reports.items() for point in report.eval_curve]
    if points:
        path.write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")


def fit_stack(
    modality: Modality, recipe: Recipe, stack: Stack, data, part_dir: Callable[[str], Path], ctx: FitContext
) -> dict[str, FitReport]:
    """Fit each strategy of the stack in order, composing each from the part it has just written."""
    reports = {}
    for name in recipe.stack:
        strategy = modality.strategies[name](recipe.strategies[name], recipe)
        part = part_dir(name)
        reports[name] = strategy.fit(stack, data, part, ctx)
        strategy.compose(stack, part)
        stack.applied.append(name)
    return reports


def _fit_on_worker(recipe: Recipe, resume: bool) -> None:
    """A rank other than 0 of a multi-process run: fit the stack with the others (its parts are scratch)."""
    modality = get_modality(recipe.modality)
    data = modality.load_data(recipe)
    stack = modality.new_stack(recipe)
    ctx = FitContext(recipe=recipe, run_dir=_work_dir(recipe), resume=resume, progress=False)
    with tempfile.TemporaryDirectory(prefix=f"mmadapt-rank{distributed.rank()}-") as scratch:

        def part_dir(name: str) -> Path:
            (Path(scratch) / name).mkdir()
            return Path(scratch) / name

        fit_stack(modality, recipe, stack, data, part_dir, ctx)


def run(recipe: Recipe, *, resume: bool = False, progress: bool = True) -> RunResult | None:
    """Fit the recipe's stack, evaluate it and write a new artifact version; return what was measured.

    Under torchrun / accelerate launch (WORLD_SIZE > 1) every rank fits (trains together);
    rank 0 alone evaluates, writes the artifact and returns the result; the other ranks wait
    for it at a barrier and return None.
    """
    if distributed.initialize() and not distributed.is_main():
        _fit_on_worker(recipe, resume)
        distributed.barrier()
        return None
    modality = get_modality(recipe.modality)
    work = _work_dir(recipe)
    with PeakMemory() as memory, Stopwatch() as total:
        data = modality.load_data(recipe)
        check_slices(modality, data, recipe)  # a bad eval.slice_by is one line before anything trains
        stack = modality.new_stack(recipe)
        with ArtifactWriter(recipe.output_dir, recipe.name) as writer:
            scorer = live_scorer(modality, stack, data, recipe) if recipe.train.eval_every else {}
            ctx = FitContext(recipe=recipe, run_dir=work, resume=resume, progress=progress, **scorer)
            reports = fit_stack(modality, recipe, stack, data, writer.part_dir, ctx)
            fits: dict[str, Any] = {
                name: {
                    "trainable_params": report.trainable_params,
                    "train_seconds": round(report.train_seconds, 3),
                    "steps": report.steps,
                    "final_loss": report.final_loss,
                    "bytes": folder_bytes(writer.part_dir(name)),
                    **({"kept": report.kept} if report.kept else {}),
                }
                for name, report in reports.items()
            }
            _write_curve(writer.tmp / "eval_curve.jsonl", reports)
            predictor = guarded(modality.predictor(stack), modality, stack, recipe.guard)
            result = evaluate(modality, predictor, data, recipe, progress=progress)
            samples = modality.write_samples(result.predictions, result.rows, writer.tmp)
            _write_predictions(writer.tmp / "predictions.jsonl", result)
            costs = {
                "train_seconds": round(sum(f["train_seconds"] for f in fits.values()), 3),
                "trainable_params": sum(f["trainable_params"] for f in fits.values()),
                "artifact_bytes": sum(f["bytes"] for f in fits.values()),
                **result.costs,
            }
            manifest = {
                "format": 1,
                "name": recipe.name,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "modality": recipe.modality,
                "stack": recipe.stack,
                "recipe": recipe.resolved(),
                "recipe_hash": recipe.hash(),
                "recipe_source": recipe.source,
                "data": {"fingerprint": data.fingerprint, "files": data.files, "paths": recipe.data_paths},
                "base_model": {"ref": recipe.base_model, **stack.base_info},
                "parts": fits,
                "metrics": result.metrics,
                "ci95": {k: list(v) for k, v in result.ci.items()},
                **({"slices": result.slices} if result.slices else {}),
                "samples": samples,
                "costs": costs,
                "versions": package_versions(),
            }
            costs["peak_rss_mib"] = round(memory.peak_mib, 1)  # peak so far: all fitting and evaluation
            costs["total_seconds"] = round(time.perf_counter() - total.start, 3)
            version_dir = writer.commit(manifest)
    distributed.barrier()  # multi-process: the other ranks exit once the artifact is written
    return RunResult(recipe, version_dir, read_manifest(version_dir), result)


@dataclass
class LoadedArtifact:
    manifest: dict[str, Any]
    recipe: Recipe
    modality: Modality
    stack: Stack
    predictor: Predictor

    def predict(self, inputs: Sequence[Any], *, progress: bool = False, **options: Any) -> list[Prediction]:
        """Predict ``inputs``, each with the per-request ``options`` the modality declares
        (:attr:`~mmadapt.protocols.Modality.option_keys`, e.g. ``vocabulary=["Zentrix", ...]`` for speech)."""
        given = {k: v for k, v in options.items() if v is not None}
        return self.predictor.predict([self.modality.request_input(x, given, "predict()") for x in inputs], progress=progress)


def load_artifact(version_dir: str | Path, bases: dict[tuple, Stack] | None = None) -> LoadedArtifact:
    """Rebuild the composed stack saved in ``version_dir`` and return its predictor.

    ``bases`` (``mmadapt serve``): the stacks whose loaded base model later versions share, by
    :meth:`~mmadapt.protocols.Modality.base_key` (see :mod:`mmadapt.engine.shared`); filled here.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    recipe = recipe_from_resolved(manifest["recipe"], manifest.get("data", {}).get("paths"))
    modality = get_modality(recipe.modality)
    key = modality.base_key(recipe) if bases is not None else None
    if key is not None:
        stack = modality.share_stack(recipe, bases.get(key))
        bases.setdefault(key, stack)
    else:
        stack = modality.new_stack(recipe)
    for name in recipe.stack:
        part = version_dir / name
        if not part.is_dir():
            raise ArtifactError(f"the {name} part is missing", path=version_dir, fix="re-run the recipe")
        modality.strategies[name](recipe.strategies[name], recipe).compose(stack, part)
        stack.applied.append(name)
    return LoadedArtifact(manifest, recipe, modality, stack, guarded(modality.predictor(stack), modality, stack, recipe.guard))


# ---------------------------------------------------------------- one run in a process of its own


def _run_resolved(
    snapshot: dict[str, str], resolved: dict[str, Any], source: str | None, resume: bool, progress: bool, threads: int | None = None
) -> dict[str, Any]:
    """In a fresh process: rebuild the recipe, run it, return the written manifest."""
    from mmadapt.protocols import restore_registry
    from mmadapt.recipe import validate_recipe

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    restore_registry(snapshot)
    recipe = validate_recipe(resolved, Path(source) if source else None)
    result = run(recipe, resume=resume, progress=progress)
    return result.manifest


def run_in_process(
    recipe: Recipe, *, resume: bool = False, progress: bool = True, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """:func:`run` in a new Python process (spawned: nothing of this one's memory or threads is
    shared, so peak memory and latency are the run's own); returns the manifest it wrote.

    ``env``: variables set in the child before it imports torch (its initializer,
    :func:`mmadapt.engine.placement.apply_env`), e.g. ``CUDA_VISIBLE_DEVICES`` to place it on one
    GPU and ``OMP_NUM_THREADS`` for its share of the cores (the child also passes that number to
    ``torch.set_num_threads``); see :func:`~mmadapt.engine.placement.slot_envs`. None: the child
    inherits this process's environment as it is.

    ``compare`` runs each stack through this (several at once with ``--parallel``). A
    user-facing error in the child is raised here as the same one-line
    :class:`~mmadapt.errors.MmadaptError`.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from mmadapt.engine.placement import apply_env
    from mmadapt.protocols import registry_snapshot

    resolved = recipe.resolved()
    resolved["data"] = {k: (recipe.data_paths.get(v, v) if isinstance(v, str) else v) for k, v in resolved["data"].items()}
    threads = str((env or {}).get("OMP_NUM_THREADS", ""))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=apply_env, initargs=(dict(env or {}),)) as pool:
        args = (registry_snapshot(), resolved, recipe.source, resume, progress, int(threads) if threads.isdigit() else None)
        future = pool.submit(_run_resolved, *args)
        try:
            return future.result()
        except BrokenProcessPool:
            raise MmadaptError(
                f"the run of {recipe.name} died (killed, or out of memory)", path=recipe.source,
                fix="check memory (peak RSS of earlier stacks is in their manifests) or run it alone with mmadapt run",
            ) from None

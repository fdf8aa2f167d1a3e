"""Evaluation during training (``train.eval_every``) and ``train.keep: best``, beside the trainer's loop.

The trainer stays modality-free: the runner gives it a scorer (:attr:`FitContext.evaluate`, the eval
split's corpus metrics for the stack as it is now) and the metric to rank by. Every ``eval_every``
steps and at the last step :class:`EvalCurve` scores the model in eval mode, appends one line to
``eval_curve.jsonl`` in the strategy's crash-surviving folder (``{"step", "loss", "metrics"}``; the
runner copies the curve into the version), and with ``train.report_to: tensorboard`` writes the same
figures as TensorBoard events (``<folder>/tensorboard``). With ``keep: best`` the trainable weights of
the best step so far are kept as ``best/weights.safetensors`` (atomically, with ``best.json``), and
:meth:`EvalCurve.finish` puts them back into the model, so the strategy saves the best step.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmadapt.config import TrainConfig
from mmadapt.engine.atomic import write_text_atomic
from mmadapt.protocols import FitContext

CURVE = "eval_curve.jsonl"
BEST = "best"


class EvalCurve:
    """The eval curve of one training run; ``None`` of it is made when ``eval_every`` is unset (:func:`curve_for`)."""

    def __init__(self, ctx: FitContext, config: TrainConfig, folder: Path, resume: bool):
        self.ctx, self.config, self.folder = ctx, config, folder
        self.path = folder / CURVE
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(folder / BEST, ignore_errors=True)
        self.points: list[dict[str, Any]] = []
        if self.path.is_file():  # a resumed run keeps the points logged before the crash
            self.points = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        best = folder / BEST / "best.json"
        self.best: dict[str, Any] | None = json.loads(best.read_text()) if best.is_file() else None
        self.board = _tensorboard(folder) if config.report_to == "tensorboard" else None

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, just taken) is scored: every ``eval_every`` and the last."""
        return step % self.config.eval_every == 0 or step == self.config.steps

    def score(self, model: torch.nn.Module, step: int, loss: float) -> None:
        """Score the model now (eval mode, no gradients), log the point, keep the weights if best."""
        model.eval()
        with torch.no_grad():
            metrics = self.ctx.evaluate()
        model.train()
        point = {"step": step, "loss": round(loss, 6), "metrics": {k: round(float(v), 4) for k, v in metrics.items()}}
        self.points.append(point)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(point) + "\n")
        if self.board is not None:
            for name, value in point["metrics"].items():
                self.board.add_scalar(f"eval/{name}", value, step)
            self.board.flush()
        value = point["metrics"].get(self.ctx.primary_metric)
        if self.config.keep == "best" and value is not None and self._better(value):
            self._keep(model, step, value)

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best["value"] if self.ctx.lower_is_better else value > self.best["value"]

    def _keep(self, model: torch.nn.Module, step: int, value: float) -> None:
        tmp, target = self.folder / f".{BEST}.tmp", self.folder / BEST
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {k: p.detach().contiguous().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "weights.safetensors"))
        self.best = {"step": step, "metric": self.ctx.primary_metric, "value": value}
        write_text_atomic(tmp / "best.json", json.dumps(self.best))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)

    def loss(self, step: int, loss: float) -> None:
        if self.board is not None:
            self.board.add_scalar("train/loss", loss, step)

    def finish(self, model: torch.nn.Module) -> dict[str, Any]:
        """With ``keep: best``, load the best step's weights back into ``model``; what the manifest records."""
        if self.board is not None:
            self.board.close()
        out: dict[str, Any] = {"eval_every": self.config.eval_every, "keep": self.config.keep, "kept_step": self.config.steps}
        if self.config.keep == "best" and self.best is not None:
            weights = load_file(str(self.folder / BEST / "weights.safetensors"))
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if param.requires_grad:
                        param.copy_(weights[name].to(param.device, param.dtype))
            out.update(kept_step=self.best["step"], best=self.best)
        return out


def curve_for(ctx: FitContext, config: TrainConfig, folder: Path, resume: bool) -> EvalCurve | None:
    """The curve of a run that evaluates while training (``eval_every`` set and a scorer given), else None."""
    if config.eval_every is None or ctx.evaluate is None:
        return None
    return EvalCurve(ctx, config, folder, resume)


def _tensorboard(folder: Path):
    """A SummaryWriter under ``folder/tensorboard``, or None with one line when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("mmadapt: train.report_to: tensorboard, but tensorboard is not installed (pip install tensorboard); "
              f"the curve is still in {CURVE}", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(folder / "tensorboard"))

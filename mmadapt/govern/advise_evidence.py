"""What an advice is given besides the team's constraints: the measured rows of a compare report, and
the compute costs that ``mmadapt plan`` predicts for a model nobody has run yet.

:mod:`mmadapt.govern.advise` weighs them; this module only gathers them. Predicted figures come from
:mod:`mmadapt.govern.plan` (its public functions; the formulas are in its docstring) and are always
labelled ``predicted (plan)``, the report's ``measured (<report file>)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError, MmadaptError

# ---------------------------------------------------------------- measured: a compare report


def read_report(path: str | Path) -> dict[str, Any]:
    """A ``report.json`` written by ``mmadapt compare``: its rows and primary metric."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("compare report not found", path=path, fix="run mmadapt compare RECIPE first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable compare report: {exc}", path=path, fix="pass the report.json mmadapt compare wrote") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "stack" in r for r in rows):
        raise DataError("no rows with a 'stack' in the report", path=path, fix="pass the report.json mmadapt compare wrote")
    return data


def latest_report(output_dir: str | Path, name: str) -> Path | None:
    """The newest ``compare/*/report.json`` of a recipe, if any."""
    found = sorted((Path(output_dir) / name / "compare").glob("*/report.json"))
    return found[-1] if found else None


def primary_metric_of(report: Mapping[str, Any], fallback: str | None) -> str | None:
    """The report's primary metric, else ``fallback``, else the first figure that has a CI."""
    if report.get("primary_metric"):
        return str(report["primary_metric"])
    if fallback:
        return fallback
    for row in report["rows"]:
        for key in row:
            if f"{key}_ci" in row:
                return key
    return None


def measured_costs(report: Mapping[str, Any], report_name: str) -> list[dict[str, Any]]:
    """The compute-cost figures of each report row that trained or was metered, labelled measured."""
    rows = []
    for row in report["rows"]:
        peak, seconds = row.get("peak_gpu_mib") or row.get("peak_rss_mib"), row.get("train_seconds")
        if peak is None and seconds is None:
            continue
        rows.append({
            "for": str(row.get("label") or row["stack"]), "source": f"measured ({report_name})",
            "setup": "as run (peak GPU memory)" if row.get("peak_gpu_mib") else "as run (peak RSS)",
            "peak GiB/device": None if peak is None else round(float(peak) / 1024, 2), "fits": None,
            "step s": None, "step order": None, "train s": seconds,
        })
    return rows


# ---------------------------------------------------------------- predicted: mmadapt plan


@dataclass(frozen=True)
class PlanRow:
    """One way to train one part of a stack (``adapter``: LoRA or QLoRA; ``full``), as plan predicts it."""

    part: str
    method: str
    parallel: str
    setup: str  # plan.describe: 'qlora-4bit, fp32, checkpointing'
    peak_gib: float  # per device
    fits: bool
    step_seconds: float
    run_gpu_hours: float  # train.steps x step time x devices
    knobs: tuple[str, ...]  # the recipe keys to set for it, where they differ from the recipe's own


@dataclass
class Predicted:
    model: str
    params_b: float
    gpus: int
    gpu_memory: str
    steps: int
    rows: list[PlanRow] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "params_b": self.params_b, "gpus": self.gpus, "gpu_memory": self.gpu_memory, "steps": self.steps}

    def best(self, part: str) -> PlanRow | None:
        """The fastest setup of ``part`` that fits (then the smallest), or None when none does."""
        fitting = [r for r in self.rows if r.part == part and r.fits]
        return min(fitting, key=lambda r: (r.step_seconds, r.peak_gib)) if fitting else None

    def leanest(self, part: str) -> PlanRow | None:
        rows = [r for r in self.rows if r.part == part]
        return min(rows, key=lambda r: r.peak_gib) if rows else None

    def shown(self) -> list[PlanRow]:
        """One row per method and parallelism: the fastest that fits, else the leanest (to say by how much not)."""
        groups: dict[tuple[str, str], list[PlanRow]] = {}
        for r in self.rows:
            groups.setdefault((r.method, r.parallel), []).append(r)
        picked = []
        for rows in groups.values():
            fitting = [r for r in rows if r.fits]
            picked.append(min(fitting, key=lambda r: (r.step_seconds, r.peak_gib)) if fitting else min(rows, key=lambda r: r.peak_gib))
        return sorted(picked, key=lambda r: (r.part != "adapter", r.method, r.parallel))

    def cost_rows(self) -> list[dict[str, Any]]:
        shown = self.shown()
        fastest = min((r.step_seconds for r in shown if r.fits), default=None)
        return [{
            "for": r.part, "source": "predicted (plan)", "setup": r.setup, "peak GiB/device": round(r.peak_gib, 1),
            "fits": "yes" if r.fits else "no", "step s": float(f"{r.step_seconds:.2g}"),
            "step order": f"{r.step_seconds / fastest:.1f}x" if fastest else None, "train s": None,
        } for r in shown]


def _knobs(setup, own) -> tuple[str, ...]:
    """The recipe keys that turn the recipe's own setup (``own``) into ``setup``."""
    if own is None:
        return ()
    knobs = []
    if setup.method != "full" and own.method != "full":
        if setup.method != own.method:
            knobs.append(f"adapter.quantize={setup.method.split('-')[1] if '-' in setup.method else 'none'}")
        if setup.r != own.r:
            knobs.append(f"adapter.r={setup.r}")
    if setup.dtype != own.dtype:
        knobs.append(f"model.dtype={setup.dtype}")
    if setup.checkpointing and not own.checkpointing:
        knobs.append("train.gradient_checkpointing=true")
    if setup.devices > 1 and setup.parallel != own.parallel:
        knobs.append(f"train.distributed.strategy={setup.parallel}")
    return tuple(knobs)


def predict_costs(model: str, recipe=None, *, gpus: int = 1, gpu_memory: str = "80GiB", seq_len: int | None = None) -> Predicted:
    """What ``mmadapt plan`` predicts for training ``model`` (a config.json, a model folder or id, llama-3-8b /
    llama-3-70b) on ``gpus`` devices of ``gpu_memory`` each: the recipe's adapter and full setups (its dtype,
    precision, checkpointing, batch, sequence length) and the alternatives plan puts beside them."""
    from mmadapt.config import TrainConfig
    from mmadapt.govern.plan import Setup, describe, load_shape, parse_size, predict, recipe_setups, with_alternatives

    if gpus < 1:
        raise MmadaptError(f"--gpus must be >= 1 (got {gpus})", fix="pass the number of devices to train on")
    capacity = parse_size(gpu_memory)
    shape = load_shape(model)
    if recipe is not None:
        own = recipe_setups(recipe, devices=gpus, device="gpu", seq_len=seq_len)
        steps = recipe.train.steps
    else:  # no recipe: mmadapt's defaults (train.*), LoRA and full
        defaults = TrainConfig()
        base = Setup(seq_len=seq_len or defaults.max_seq_len, batch=defaults.batch_size, micro_batch=defaults.batch_size, devices=gpus)
        own = [replace(base, method=m, parallel=p) for m in ("lora", "full") for p in (("ddp", "fsdp") if gpus > 1 else ("ddp",))]
        steps = defaults.steps
    chosen = recipe.train.distributed.strategy if recipe is not None else "ddp"
    first = {}  # the recipe's own setup of each part (its train.distributed.strategy): what the knobs are measured from
    for s in own:
        if s.devices == 1 or s.parallel == chosen:
            first.setdefault("full" if s.method == "full" else "adapter", s)
    result = Predicted(model=model, params_b=shape.params / 1e9, gpus=gpus, gpu_memory=str(gpu_memory), steps=steps)
    own_r = next((s.r for s in own if s.method != "full"), None)  # plan's alternatives take r=8: keep the recipe's rank
    setups = [replace(s, r=own_r) if own_r and s.method != "full" else s for s in with_alternatives(own)]
    for setup in dict.fromkeys(setups):
        p = predict(shape, setup)
        part = "full" if setup.method == "full" else "adapter"
        result.rows.append(PlanRow(
            part=part, method=setup.method, parallel=setup.parallel, setup=describe(setup), peak_gib=p.peak_bytes / 2**30,
            fits=p.peak_bytes <= capacity, step_seconds=p.step_seconds, run_gpu_hours=steps * p.step_seconds * gpus / 3600,
            knobs=_knobs(setup, first.get(part) or next(iter(first.values()))) if recipe is not None else (),
        ))
    return result

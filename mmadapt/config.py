"""Recipe sections shared by every modality: the strict base model, and the ``train``, ``eval`` and
``compare`` sections; and how every YAML file of mmadapt (recipes, evaluation suites) is read strictly
and how its errors read (key paths, did-you-mean). A modality's own sections (``data``, ``inference``, each strategy's settings)
live in ``mmadapt/modalities/<name>/config.py`` and are registered in :mod:`mmadapt.protocols`."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmadapt.errors import MmadaptError


class StrictModel(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistributedConfig(StrictModel):
    """How a multi-process run (torchrun / accelerate launch) shares the model; ignored in one process."""

    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: a replica per process; fsdp: weights, grads and optimizer state sharded")


class TrainConfig(StrictModel):
    """How strategies that train (adapter, full) are trained."""

    steps: int = Field(200, ge=1, le=1_000_000, description="optimizer steps")
    lr: float = Field(2.0e-4, gt=0, le=1.0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, le=4096, description="global batch size (examples per optimizer step)")
    micro_batch_size: int | None = Field(None, ge=1, le=4096, description="examples per forward pass; None = batch_size")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(10, ge=0, le=1_000_000)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="steps between resumable checkpoints")
    max_seq_len: int = Field(512, ge=8, le=131072)
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast mixed precision (weights stay fp32)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (transformers' non-reentrant checkpointing): less memory, ~30% more time"
    )
    packing: bool = Field(
        False,
        description="several examples per row, no padding; position ids restart per example and attention stays inside each "
        "example (modalities that support it: text)",
    )
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="multi-process settings")
    eval_every: int | None = Field(
        None, ge=1, le=1_000_000, description="score the eval split every N steps (and at the last) during training: "
        "eval_curve.jsonl in the version; None = only after training"
    )
    keep: Literal["last", "best"] = Field(
        "last", description="best: the weights of the step with the best primary metric (needs eval_every; the manifest says which step)"
    )
    report_to: Literal["none", "tensorboard"] = Field("none", description="tensorboard: the loss and eval curve as TensorBoard events too")
    ema: bool = Field(
        False, description="keep an exponential moving average of the trained weights (diffusers' EMAModel) and save it "
        "instead of the last step's weights; resumed with the run"
    )
    ema_decay: float = Field(
        0.9999, gt=0.0, lt=1.0, description="the EMA's decay cap (EMAModel ramps it up as (1 + n) / (10 + n) over the first steps)"
    )

    @model_validator(mode="after")
    def _best_needs_evaluations(self) -> TrainConfig:
        if self.keep == "best" and self.eval_every is None:
            raise ValueError("keep: best needs eval_every (the steps whose scores it chooses from)")
        return self


class ModelConfig(StrictModel):
    """How the base model is loaded (every modality that loads weights reads it)."""

    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of the frozen base weights; trainable weights stay fp32 (adapters; full fine-tuning trains fp32 weights and runs them in this dtype)"
    )


class TrainOverrides(StrictModel):
    """Per-strategy changes to the recipe's ``train`` section (e.g. a lower lr for ``full``)."""

    steps: int | None = Field(None, ge=1, le=1_000_000)
    lr: float | None = Field(None, gt=0, le=1.0)
    batch_size: int | None = Field(None, ge=1, le=4096)
    micro_batch_size: int | None = Field(None, ge=1, le=4096)
    warmup_steps: int | None = Field(None, ge=0, le=1_000_000)

    def apply(self, train: TrainConfig) -> TrainConfig:
        return train.model_copy(update={k: v for k, v in self.model_dump().items() if v is not None})


class EvalConfig(StrictModel):
    """How the composed stack is evaluated."""

    metrics: list[str] | None = Field(
        None, description="the modality's metric names or package.module:function (mmadapt.evalspec); None = the modality's defaults"
    )
    limit: int | None = Field(None, ge=1, le=1_000_000, description="evaluate on the first N eval examples")
    latency_samples: int = Field(8, ge=0, le=10_000, description="inputs timed one by one for latency p50/p95")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples for confidence intervals")
    min: dict[str, float] = Field(default_factory=dict, description="bars a version must meet to be promoted")
    suites: list[str] = Field(
        default_factory=list, description="suite files (eval/*.yaml) whose bars a version must also meet to be promoted"
    )
    slice_by: str | None = Field(
        None, description="a metadata field of the eval examples (or one the modality derives, Modality.derived_slices): "
        "every metric is also reported per value of it, with its CI; None = no slices"
    )


class CompareConfig(StrictModel):
    """The stacks ``mmadapt compare`` runs when ``--stacks`` is not given, and the grid it sweeps
    when ``--grid`` is not given (the rules: mmadapt/govern/sweep.py)."""

    stacks: list[str] | None = Field(
        None, description="e.g. [base, prompt, retrieval, adapter, full, prompt+retrieval+adapter]; None = base, each strategy alone, the whole stack"
    )
    strategies: dict[str, Any] = Field(
        default_factory=dict, description="settings of strategies that only compare uses (e.g. full beside the adapter stack)"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="key path -> values, e.g. {adapter.r: [8, 16], train.lr: [1.0e-3, 2.0e-3]}: each stack a key applies to "
        "runs once per combination",
    )

    @field_validator("strategies")
    @classmethod
    def _not_null_sections(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: ({} if v is None else v) for k, v in value.items()}


# ---------------------------------------------------------------- strict YAML and its errors


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a plain string, not {type(key).__name__}", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)




def read_strict_yaml(path: Path, *, what: str, error: type[MmadaptError], fix_missing: str, max_bytes: int = 1 << 20) -> Any:
    """Parse a YAML file strictly (no duplicate keys); every failure is one ``error`` line naming the file.

    ``what`` names the kind of file in the messages ("recipe", "suite").
    """
    if not path.exists():
        raise error(f"{what} file not found", path=path, fix=fix_missing)
    if path.is_dir():
        raise error(f"is a folder, not a {what} file", path=path, fix="pass the .yaml file inside it")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{what} is {size} bytes; {what}s are at most {max_bytes // 2**20} MiB", path=path)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8 text", path=path, fix=f"save the {what} as UTF-8 YAML") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", path=path) from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise error(f"invalid YAML{where}: {problem}", path=path, fix="fix the YAML syntax") from None
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        raise error(f"invalid YAML: {str(exc).splitlines()[0][:200]}", path=path) from None




def fmt_loc(prefix: Sequence[Any], loc: Sequence[Any]) -> str:
    parts = [str(p) for p in (*prefix, *loc)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "(top level)"


def model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model found by walking ``loc`` through ``model``'s fields."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(choices)})"


def validation_messages(exc: ValidationError, model: type[BaseModel], prefix: Sequence[Any]) -> list[str]:
    messages = []
    for err in exc.errors():
        loc = err.get("loc", ())
        where = fmt_loc(prefix, loc)
        if err["type"] == "extra_forbidden":
            parent = model_at(model, loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            messages.append(f"{where}: unknown key{suggest(str(loc[-1]), allowed) if allowed else ''}")
        elif err["type"] == "missing":
            messages.append(f"{where}: required key is missing")
        else:
            value = err.get("input")
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            messages.append(f"{where}: {err['msg']} (got {shown})")
    return messages

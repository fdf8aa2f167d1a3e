"""Recipe sections shared by every modality: the strict base model, and the ``train``, ``eval`` and
``compare`` sections. A modality's own sections (``data``, ``inference``, each strategy's settings)
live in ``mmadapt/modalities/<name>/config.py`` and are registered in :mod:`mmadapt.protocols`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="multi-process settings")


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

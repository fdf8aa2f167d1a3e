"""The one strategy protocol shared by every modality.

A recipe names a modality and a *stack* of strategies drawn from one vocabulary:
``prompt``, ``retrieval``, ``adapter``, ``full``. The runner fits them in
:data:`STACK_ORDER`; each strategy

* ``fit``s: learns what it needs from the data and writes its *part* of the artifact
  into a folder of its own (``prompt.json``, ``index/``, ``adapter/``, ``model/``), and
* ``compose``s: applies a saved part to the modality's :class:`Stack` (the live state
  a predictor reads: base model, prompt builder, retriever ...).

The runner always composes from the part it has just written, so what is evaluated is
exactly what reloads from disk. A :class:`Modality` plugs in its data loader, its stack,
its predictor and its metrics; shared code never branches on the modality's name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mmadapt.config import StrictModel

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

STACK_ORDER: tuple[str, ...] = ("prompt", "retrieval", "adapter", "full")
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"adapter", "full"}),)


@dataclass
class Example:
    """One item of a dataset split, whatever the modality."""

    id: str
    input: Any  # text: a question; speech: an audio path; image: a prompt
    reference: Any = None  # text: the answer; speech: the transcript; image: None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. key_fact, terms, caption


@dataclass
class DataBundle:
    """The data of one recipe: train and eval splits plus modality resources."""

    train: list[Example]
    eval: list[Example]
    resources: dict[str, Any] = field(default_factory=dict)  # knowledge base, vocabulary, references
    fingerprint: str = ""  # sha256 over every data file read
    files: list[str] = field(default_factory=list)


@dataclass
class Prediction:
    """What a predictor returns for one input."""

    output: Any  # text answer, transcript, or a PIL image
    sources: list[str] = field(default_factory=list)  # passages / terms / reference images used
    info: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    def predict(self, inputs: Sequence[Any], *, progress: bool = False) -> list[Prediction]: ...


@dataclass
class FitReport:
    """What fitting one strategy cost and learned."""

    trainable_params: int = 0
    train_seconds: float = 0.0
    steps: int = 0
    final_loss: float | None = None
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitContext:
    """Run-wide settings a strategy may need while fitting."""

    recipe: Recipe
    run_dir: Path  # scratch space that survives a crash (checkpoints for --resume)
    resume: bool = False
    progress: bool = True


class Stack:
    """The live state of a composed stack; a modality subclasses it with its fields."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.applied: list[str] = []


class Strategy(ABC):
    """One adaptation strategy of one modality."""

    name: ClassVar[str]
    config_model: ClassVar[type[StrictModel]]
    trains: ClassVar[bool] = False  # True when fit() updates model weights

    def __init__(self, config: StrictModel, recipe: Recipe):
        self.config = config
        self.recipe = recipe

    @abstractmethod
    def fit(self, stack: Stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        """Learn from ``data`` (the stack holds the strategies fitted before) and write the part."""

    @abstractmethod
    def compose(self, stack: Stack, part_dir: Path) -> None:
        """Apply a saved part to ``stack``."""


class Modality(ABC):
    """What a modality registers: strategies, recipe sections, data, stack, predictor, metrics."""

    name: ClassVar[str]
    strategies: ClassVar[dict[str, type[Strategy]]]
    inference_model: ClassVar[type[StrictModel]]  # the recipe's ``inference:`` section
    data_model: ClassVar[type[StrictModel]]  # the recipe's ``data:`` section
    metrics: ClassVar[tuple[str, ...]]
    default_metrics: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]

    @abstractmethod
    def load_data(self, recipe: Recipe) -> DataBundle: ...

    def validate_data(self, recipe: Recipe) -> list:
        """Every problem of the recipe's data as :class:`mmadapt.engine.validate.Problem` s (errors and warnings).

        A modality overrides this to report all problems at once, with file and line; this
        default tries :meth:`load_data` and reports its one error (or nothing).
        """
        from mmadapt.engine.validate import Problem
        from mmadapt.errors import MmadaptError

        try:
            self.load_data(recipe)
        except MmadaptError as exc:
            return [Problem.from_error(exc)]
        return []

    @abstractmethod
    def new_stack(self, recipe: Recipe) -> Stack:
        """Load the base model into a fresh stack."""

    @abstractmethod
    def predictor(self, stack: Stack) -> Predictor: ...

    @abstractmethod
    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        """One row per example: ``{"id": ..., "<metric>": value, ...}`` (plus any detail columns)."""

    def export_model(self, stack: Stack, out_dir: Path) -> list[str]:
        """Write the composed stack's weights into ``out_dir`` as one servable model folder
        (adapters merged, safetensors); return what was merged. See :mod:`mmadapt.engine.export`."""
        from mmadapt.errors import ArtifactError

        raise ArtifactError(f"the {self.name} modality cannot export a merged model yet", fix="export without --merge")

    def write_samples(self, predictions: list[Prediction], rows: list[dict[str, Any]], folder: Path) -> list[str]:
        """Files (relative to the artifact ``folder``) a modality writes beside ``predictions.jsonl``:
        generated images and a contact sheet for images; the first one is the overview a report shows.
        It may add columns to ``rows`` (e.g. the image file of each example). The default writes none."""
        return []

    def aggregate(self, rows: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
        """Corpus-level metrics from per-example rows; the default is the mean of each metric.

        A modality overrides this where the corpus figure is not a mean (WER is errors over
        all reference words). Bootstrap confidence intervals resample rows and call it again.
        """
        out = {}
        for metric in metrics:
            values = [r[metric] for r in rows if r.get(metric) is not None]
            if values:
                out[metric] = float(sum(values) / len(values))
        return out


MODALITIES: dict[str, str] = {
    "text": "mmadapt.modalities.text:TextModality",
    "speech": "mmadapt.modalities.speech:SpeechModality",
    "image": "mmadapt.modalities.image:ImageModality",
}


def get_modality(name: str) -> Modality:
    """The registered modality called ``name`` (imported lazily: text needs no diffusers)."""
    from mmadapt.errors import RecipeError

    target = MODALITIES.get(name)
    if target is None:
        raise RecipeError(f"unknown modality {name!r}", fix=f"use one of: {', '.join(sorted(MODALITIES))}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RecipeError(
            f"modality {name!r} is not available in this installation ({exc})",
            fix="pip install 'mmadapt[embedded]'",
        ) from exc
    return getattr(module, attr)()


def ordered(names: Sequence[str]) -> list[str]:
    """Strategy names in the order a stack composes them."""
    return sorted(names, key=STACK_ORDER.index)

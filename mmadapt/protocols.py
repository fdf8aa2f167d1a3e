"""The two contracts of mmadapt — :class:`Strategy` and :class:`Modality` — and the one registry of modalities.

A recipe names a modality and a *stack* of strategies drawn from one vocabulary:
``prompt``, ``retrieval``, ``adapter``, ``full``. The runner fits them in
:data:`STACK_ORDER`; each strategy

* ``fit``s: learns what it needs from the data and writes its *part* of the artifact
  into a folder of its own (``prompt.json``, ``index/``, ``adapter/``, ``model/``), and
* ``compose``s: applies a saved part to the modality's :class:`Stack` (the live state
  a predictor reads: base model, prompt builder, retriever ...).

The runner always composes from the part it has just written, so what is evaluated is
exactly what reloads from disk.

A :class:`Modality` declares everything shared code needs to know about it: its recipe
sections, its one data parser, its stack and predictor, its metrics and which way each one
is better, which retrieval resource a recipe of it has, what stands for an input in drift,
how batch reads inputs and writes outputs, what the CLI shows of a prediction, and which OpenAI
endpoint ``mmadapt serve`` answers for it (a request's fields -> predictor inputs -> response body). Shared
code (engine/, govern/, cli/) asks the registered modality and never branches on its name
or guesses with ``getattr``. :func:`register_modality` (or the ``mmadapt.modalities`` entry
point group of an installed package) is the one place a modality is registered; the three
built-in ones are listed in :data:`MODALITIES`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mmadapt.config import StrictModel
from mmadapt.records import (  # noqa: F401  re-exported: the records are part of the contract
    API_ENDPOINTS,
    DataBundle,
    Example,
    FitContext,
    FitReport,
    GuardSurface,
    Prediction,
    ServeRequest,
)

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

STACK_ORDER: tuple[str, ...] = ("prompt", "retrieval", "adapter", "full")
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"adapter", "full"}),)


class Predictor(Protocol):
    def predict(self, inputs: Sequence[Any], *, progress: bool = False) -> list[Prediction]: ...


class Stack:
    """The live state of a composed stack; a modality subclasses it with its fields."""

    def __init__(self, recipe: Recipe, base_info: dict[str, Any] | None = None):
        self.recipe = recipe
        self.base_info: dict[str, Any] = dict(base_info or {})  # what was loaded: written to the manifest
        self.applied: list[str] = []


class Strategy(ABC):
    """One adaptation strategy of one modality."""

    name: ClassVar[str]
    config_model: ClassVar[type[StrictModel]]
    trains: ClassVar[bool]  # True when fit() updates model weights (advise, compute budgets)

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
    """What a modality declares. Shared code reads these and nothing else.

    Class attributes (checked by :func:`register_modality`):

    * ``name``, ``strategies`` (stack name -> :class:`Strategy` class), ``data_model`` and
      ``inference_model`` (the recipe's ``data:`` / ``inference:`` sections; ``data_model``
      has an ``eval`` field: the held-out split);
    * ``metrics``, ``default_metrics``, ``primary_metric`` and ``lower_is_better`` (the metrics
      where a smaller value is better, e.g. WER; every other metric is higher-is-better);
    * ``input_keys``: the keys of a batch JSONL record that hold its input, first found wins;
    * ``option_keys`` (optional, default none): per-request settings a batch record (and ``ask``,
      the library) may give beside the input, e.g. speech's ``vocabulary``; :meth:`request_input`
      folds them into the predictor's input;
    * ``api_endpoint``: the OpenAI endpoint ``mmadapt serve`` answers for it, one of
      :data:`API_ENDPOINTS` (``chat.completions`` | ``audio.transcriptions`` | ``images.generations``);
    * ``guard_surface``: what the ``guard:`` rules may read of its inputs and predictions (:class:`GuardSurface`).
    """

    name: ClassVar[str]
    strategies: ClassVar[dict[str, type[Strategy]]]
    inference_model: ClassVar[type[StrictModel]]  # the recipe's ``inference:`` section
    data_model: ClassVar[type[StrictModel]]  # the recipe's ``data:`` section
    metrics: ClassVar[tuple[str, ...]]
    default_metrics: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    lower_is_better: ClassVar[frozenset[str]]
    input_keys: ClassVar[tuple[str, ...]]
    option_keys: ClassVar[tuple[str, ...]] = ()
    api_endpoint: ClassVar[str]
    guard_surface: ClassVar[GuardSurface]

    # ---- data
    @abstractmethod
    def load_data(self, recipe: Recipe) -> DataBundle:
        """Parse the recipe's data; one :class:`~mmadapt.errors.DataError` on the first bad file."""

    @abstractmethod
    def validate_data(self, recipe: Recipe) -> list:
        """Every problem of the recipe's data (:class:`mmadapt.engine.validate.Problem`), through the same parser."""

    @abstractmethod
    def retrieval_source(self, recipe: Recipe) -> str | None:
        """The resource the ``retrieval`` strategy searches in this recipe (knowledge base, vocabulary,
        reference images), as the path written in the recipe; None when the recipe has none."""

    # ---- model
    @abstractmethod
    def new_stack(self, recipe: Recipe) -> Stack:
        """Load the base model into a fresh stack."""

    @abstractmethod
    def predictor(self, stack: Stack) -> Predictor: ...

    # ---- evaluation
    @abstractmethod
    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        """One row per example: ``{"id": ..., "<metric>": value, ...}`` (plus any detail columns)."""

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

    # ---- drift
    @abstractmethod
    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        """The text that stands for each example's input when drift embeds inputs
        (a question; a clip's transcript; an image prompt)."""

    @abstractmethod
    def drift_terms(self, data: DataBundle) -> list[str]:
        """Domain words drift counts as known besides the train split's own (a vocabulary); may be empty."""

    @abstractmethod
    def drift_embedder(self, recipe: Recipe) -> str | None:
        """The text embedder drift embeds :meth:`drift_texts` with for this recipe (e.g. its retrieval
        embedder, whose space the passages share); None for drift's default (MiniLM)."""

    # ---- batch and CLI
    @abstractmethod
    def output_json(self, output: Any, index: int, files_dir: Path) -> Any:
        """A prediction's output as a JSON value for a batch output line (objects such as images
        are written under ``files_dir``, named by ``index``, and their path returned)."""

    @abstractmethod
    def show(self, input: Any, prediction: Prediction) -> str:
        """What the CLI prints for one prediction (a few lines; no trailing newline)."""

    # ---- serve
    @abstractmethod
    def serve_inputs(self, request: ServeRequest) -> list[Any]:
        """The predictor's inputs for one request of :attr:`api_endpoint` (a question, the uploaded
        file's path, a prompt once per image asked for); raise :class:`~mmadapt.errors.RequestError`
        (HTTP 400, one line) for a request it cannot take."""

    @abstractmethod
    def serve_payload(self, predictions: list[Prediction], request: ServeRequest) -> dict[str, Any]:
        """The endpoint's response body for these predictions, as OpenAI shapes it (``choices``;
        ``text``; ``data`` of base64 PNGs). The server adds ``id``, ``created``, ``model`` and
        ``mmadapt.version``; anything the modality puts under ``mmadapt`` (e.g. ``sources``) is kept."""

    def serve_check(self, inputs: list[Any], request: ServeRequest, stack: Stack) -> None:
        """Check one request's predictor inputs (from :meth:`serve_inputs`) against the loaded version's
        ``stack`` before they wait for the model: what the request's fields alone cannot tell (text: the
        prompt's tokens plus ``max_tokens`` within the model's context length). Raise
        :class:`~mmadapt.errors.RequestError` (HTTP 400; its ``param`` and ``code`` go in the body). The
        default checks nothing."""
        return None

    # ---- guard
    @abstractmethod
    def guard_output(self, message: str, stack: Stack) -> Any:
        """What stands in for a prediction's output when the guard refuses or hands off (``message``
        is the recipe's ``guard.refusal`` or ``guard.handoff``): the message itself where outputs are
        text; a modality whose outputs are not text returns one of its own (an image: a blank one)."""

    # ---- optional
    export_formats: ClassVar[tuple[str, ...]] = ("transformers",)  # what ``export_model`` can write

    def guard_words(self, input: Any) -> list[str]:
        """The user's words in one predictor input, each checked by the guard's input rules where
        ``guard_surface.words`` is ``"input"``: the input itself when it is text (the default); a
        modality whose inputs hold several texts (text: a conversation's system and user turns) lists each."""
        return [input] if isinstance(input, str) else []

    def request_input(self, input: Any, options: dict[str, Any], source: str) -> Any:
        """One predictor input from an input and its per-request ``options`` (keys of :attr:`option_keys`;
        ``source`` names where they came from, for errors). With no options: the input unchanged."""
        from mmadapt.errors import MmadaptError

        if options:
            raise MmadaptError(f"{', '.join(sorted(options))}: not an option of the {self.name} modality", path=source,
                               fix=f"options: {', '.join(self.option_keys) or 'none'}")
        return input

    def export_model(self, stack: Stack, out_dir: Path, format: str = "transformers") -> list[str]:
        """Write the composed stack's weights into ``out_dir`` as one servable model folder
        (adapters merged; ``transformers``: safetensors, or another of :attr:`export_formats`);
        return what was merged. See :mod:`mmadapt.engine.export`."""
        from mmadapt.errors import ArtifactError

        raise ArtifactError(f"the {self.name} modality cannot export a merged model yet", fix="export without --merge")

    def base_key(self, recipe: Recipe) -> tuple | None:
        """What identifies the loaded base model of ``recipe`` for sharing (``mmadapt serve``: versions
        with equal keys share one loaded base, see :mod:`mmadapt.engine.shared`); None (the default):
        this recipe's stack cannot share its base (e.g. a `full` fine-tune owns its weights)."""
        return None

    def share_stack(self, recipe: Recipe, base: Stack | None) -> Stack:
        """A stack for ``recipe`` over the loaded base of ``base`` (no copy of its weights), or, with
        ``base`` None, a new stack whose base later stacks may share; adapters it composes then load
        as named adapters of that base. Called only where :meth:`base_key` is not None."""
        raise NotImplementedError(f"the {self.name} modality does not share a base model")

    def derived_slices(self, data: DataBundle) -> dict[str, list[str]]:
        """Slice fields this modality computes rather than reads from the eval files (``eval.slice_by``):
        field -> one value per example of ``data.eval``, in order (speech: ``terms_seen``, whether a clip's
        domain terms are all spoken in the train split). Any metadata field of the eval examples slices
        too. The default derives none."""
        return {}

    adapter_formats: ClassVar[tuple[str, ...]] = ()  # tool layouts ``export_adapter`` can write (image: diffusers, kohya)

    def export_adapter(self, stack: Stack, version_dir: Path, out_dir: Path, fmt: str) -> list[str]:
        """Write the version's trained adapter into ``out_dir`` in a file layout other tools load
        (``fmt``: e.g. ``diffusers`` / ``kohya`` for images); return the files written."""
        from mmadapt.errors import ArtifactError

        raise ArtifactError(f"the {self.name} modality has no adapter export format {fmt!r}", fix="export without --format")

    def write_samples(self, predictions: list[Prediction], rows: list[dict[str, Any]], folder: Path) -> list[str]:
        """Files (relative to the artifact ``folder``) a modality writes beside ``predictions.jsonl``:
        generated images and a contact sheet for images; the first one is the overview a report shows.
        It may add columns to ``rows`` (e.g. the image file of each example). The default writes none."""
        return []


# ---------------------------------------------------------------- the registry

MODALITIES: dict[str, str] = {
    "text": "mmadapt.modalities.text:TextModality",
    "image": "mmadapt.modalities.image:ImageModality",
    "speech": "mmadapt.modalities.speech:SpeechModality",
}
ENTRY_POINT_GROUP = "mmadapt.modalities"  # an installed package registers a modality as NAME = "module:Class"
_REQUIRED = ("name", "strategies", "inference_model", "data_model", "metrics", "default_metrics", "primary_metric",
             "lower_is_better", "input_keys", "api_endpoint", "guard_surface")
_loaded: dict[str, Modality] = {}
_entry_points_read = False


def register_modality(name: str, target: str | type[Modality]) -> None:
    """Register a modality as ``name`` -> ``"package.module:Class"`` (imported on first use) or a class.

    The recipe schema, ``run``, ``compare``, ``advise``, ``ab``, ``drift``, ``batch`` and the CLI
    all find it here. A class is stored by its import path, so processes that ``compare`` starts
    import the same one.
    """
    if not isinstance(target, str):
        check_modality(target)
        if "<locals>" in target.__qualname__:
            raise ValueError(f"modality {target.__qualname__} is defined inside a function: define it at module level")
        target = f"{target.__module__}:{target.__qualname__}"
    if ":" not in target:
        raise ValueError(f"modality target {target!r} must be 'package.module:Class'")
    MODALITIES[name] = target
    _loaded.pop(name, None)


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        MODALITIES.setdefault(ep.name, ep.value)


def modality_names() -> list[str]:
    """Every registered modality's name (built-in, registered in-process, or by an entry point)."""
    _read_entry_points()
    return list(MODALITIES)


def registry_snapshot() -> dict[str, str]:
    """The registrations, to replay in another process (:func:`restore_registry`)."""
    _read_entry_points()
    return dict(MODALITIES)


def restore_registry(snapshot: dict[str, str]) -> None:
    for name, target in snapshot.items():
        if MODALITIES.get(name) != target:
            register_modality(name, target)


def check_modality(cls: type[Modality]) -> None:
    """The contract a registered class must meet: every declaration present and consistent."""
    missing = [attr for attr in _REQUIRED if not hasattr(cls, attr)]
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    problems = []
    if missing:
        problems.append(f"declares no {', '.join(missing)}")
    if abstract:
        problems.append(f"does not implement {', '.join(abstract)}")
    if not missing:
        unknown = [m for m in (*cls.default_metrics, cls.primary_metric, *cls.lower_is_better) if m not in cls.metrics]
        if unknown:
            problems.append(f"names metrics it does not list in `metrics`: {', '.join(unknown)}")
        bad = [s for s in cls.strategies if s not in STACK_ORDER]
        if bad:
            problems.append(f"strategies {bad} are not in the vocabulary {STACK_ORDER}")
        untyped = [s for s, k in cls.strategies.items() if not hasattr(k, "trains")]
        if untyped:
            problems.append(f"strategies {untyped} do not say whether they train (`trains`)")
        if cls.api_endpoint not in API_ENDPOINTS:
            problems.append(f"api_endpoint {cls.api_endpoint!r} is not one of {API_ENDPOINTS}")
        if not isinstance(cls.guard_surface, GuardSurface):
            problems.append("guard_surface is not a GuardSurface")
        if "eval" not in cls.data_model.model_fields:
            problems.append("its data_model has no `eval` field (the held-out split)")
    if problems:
        raise TypeError(f"modality {cls.__module__}.{cls.__qualname__} " + "; ".join(problems))


def get_modality(name: str) -> Modality:
    """The registered modality called ``name`` (imported lazily: text needs no diffusers)."""
    from mmadapt.errors import RecipeError

    if name in _loaded:
        return _loaded[name]
    _read_entry_points()
    target = MODALITIES.get(name)
    if target is None:
        raise RecipeError(f"unknown modality {name!r}", fix=f"use one of: {', '.join(MODALITIES)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RecipeError(
            f"modality {name!r} is not available in this installation ({exc})",
            fix="pip install 'mmadapt[embedded]'",
        ) from exc
    cls = vars(module).get(attr)
    if cls is None:
        raise RecipeError(f"modality {name!r}: {module_name} has no {attr}", fix=f"register it as 'module:Class' (now {target!r})")
    check_modality(cls)
    _loaded[name] = cls()
    return _loaded[name]


def strategy_trains(name: str) -> bool:
    """Whether strategy ``name`` trains weights in any registered modality that offers it (what
    ``advise`` assumes when no recipe names the modality; with one it asks that modality)."""
    from mmadapt.errors import RecipeError

    for modality_name in modality_names():
        try:
            strategies = get_modality(modality_name).strategies
        except RecipeError:  # a registered modality that does not import here says nothing
            continue
        if name in strategies and strategies[name].trains:
            return True
    return False


def ordered(names: Sequence[str]) -> list[str]:
    """Strategy names in the order a stack composes them."""
    return sorted(names, key=STACK_ORDER.index)

"""The records that cross the contracts of :mod:`mmadapt.protocols`: examples and data bundles,
predictions, serve requests, what a modality offers the guard, and what fitting a strategy gets
(:class:`FitContext`) and reports (:class:`FitReport`). Plain dataclasses, no behaviour; import
them from :mod:`mmadapt.protocols`, which re-exports them with the contracts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe


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


@dataclass
class ServeRequest:
    """One OpenAI-style request as a modality sees it (``mmadapt serve``).

    ``fields`` is the JSON body (chat, images) or the multipart form's text fields (audio);
    ``file`` the uploaded file, written by the server to a temporary file it removes after the
    prediction. The server has already checked the shared limits (body size, ``max_tokens``,
    ``n``, prompt length) and which endpoint the recipe answers.
    """

    fields: dict[str, Any]
    file: Path | None = None


@dataclass(frozen=True)
class GuardSurface:
    """What a modality offers a recipe's ``guard:`` rules (:mod:`mmadapt.guard`).

    ``words``: where the user's words are, which the input rules read: ``"input"`` (a question, an
    image prompt: checked before the model runs), ``"output"`` (a speech transcript) or None.
    ``output_text``: the prediction's output is text the output rules redact (an answer, a transcript).
    ``escalation``: predictions carry ``info["retrieval_score"]`` (the best retrieved passage's score,
    when the stack retrieves) and ``info["mean_logprob"]`` (the answer's mean token log-probability),
    so ``guard.escalation`` applies; a recipe that sets it for a modality without them is refused.
    Predictions may also carry ``info["passages"]`` (the retrieved texts) for the passage check.
    """

    words: Literal["input", "output"] | None
    output_text: bool
    escalation: bool


API_ENDPOINTS: tuple[str, ...] = ("chat.completions", "audio.transcriptions", "images.generations")


@dataclass
class FitReport:
    """What fitting one strategy cost and learned."""

    trainable_params: int = 0
    train_seconds: float = 0.0
    steps: int = 0
    final_loss: float | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    eval_curve: list[dict[str, Any]] = field(default_factory=list)  # train.eval_every: {"step", "loss", "metrics"} per point
    kept: dict[str, Any] = field(default_factory=dict)  # eval_every, keep, kept_step (and the best point with keep: best)


@dataclass
class FitContext:
    """Run-wide settings a strategy may need while fitting."""

    recipe: Recipe
    run_dir: Path  # scratch space that survives a crash (checkpoints for --resume)
    resume: bool = False
    progress: bool = True
    # train.eval_every: the runner's scorer of the live stack (corpus metrics of the eval split), the
    # metric keep: best ranks by, and whether lower is better; None where nothing is scored while training
    evaluate: Callable[[], dict[str, float]] | None = None
    primary_metric: str = ""
    lower_is_better: bool = False

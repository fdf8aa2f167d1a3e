"""The rules of ``mmadapt advise`` and their thresholds, in one table.

:mod:`mmadapt.govern.advise` applies them; ``docs/advise.md`` holds the same table for readers
(the test suite checks the two agree). The thresholds are rules of thumb for models of
0.1-10 B parameters. :class:`Constraints` is what the rules read, checked against the forms named here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmadapt.errors import MmadaptError

PRIVACY = ("public", "internal", "restricted")
CADENCE_DAYS = {"weekly": 7, "monthly": 30, "quarterly": 91}  # --release-cadence NAME -> days between releases
CADENCE_FORMS = "weekly, monthly, quarterly or a number of days (e.g. 14)"
KNOWLEDGE = ("often", "rarely")
DEFAULT_STACKS = ("prompt", "prompt+retrieval", "prompt+adapter", "prompt+retrieval+adapter", "prompt+full")
COST = {"prompt": 1, "retrieval": 2, "adapter": 4, "full": 8}  # a-priori cost of each part

FEW_EXAMPLES = 100
MANY_EXAMPLES = 1000
FULL_EXAMPLES = 10_000
FULL_GPU_HOURS = 24.0
TIGHT_LATENCY_MS = 500.0
FREQUENT_RELEASE_DAYS = 14  # releases at most this many days apart retrain often (C1)

# id -> (kind, when, effect, why). docs/advise.md holds the same table for readers.
RULES: dict[str, tuple[str, str, str, str]] = {
    "D1": ("hard", "the recipe names nothing for retrieval to search (knowledge base, vocabulary, references)",
           "exclude stacks with retrieval", "retrieval needs something to index"),
    "D2": ("hard", "examples = 0", "exclude stacks that train (adapter, full)", "nothing to train on"),
    "E1": ("prior", f"examples < {FEW_EXAMPLES}", "exclude full",
           "too few examples to train every weight without memorising them"),
    "G1": ("hard", "gpu-hours = 0", "exclude stacks that train", "no compute budget for training"),
    "G2": ("hard", "report: train_seconds / 3600 > gpu-hours", "exclude that stack",
           "one training run costs more than the budget (as measured)"),
    "L2": ("hard", "report: latency_p95_ms > latency-ms", "exclude that stack",
           "measured tail latency is over the budget"),
    "B1": ("hard", "recipe `eval.min` and report: a stack misses a bar while another meets all",
           "exclude the stacks that miss", "it could never be promoted"),
    "F1": ("hard", "--model: plan predicts a training part's peak memory per device over --gpu-memory in every setup "
           "(LoRA, QLoRA 4-bit, full; DDP, FSDP; bf16, checkpointing)",
           "exclude the stacks with that part", "it cannot train on the devices (predicted from the model's config)"),
    "F2": ("predicted", "--model: a training part fits in some setup", "none: names the fastest setup that fits, "
           "its recipe keys and predicted GPU-hours", "what the stack costs on a model not run yet (an order, not a promise)"),
    "P1": ("operational", "privacy = restricted", "stacks that train -3; retrieval +1",
           "weights memorise training data: a trained artifact becomes restricted data itself and forgetting "
           "a record means retraining; an index keeps records deletable and behind access control"),
    "K1": ("operational", "knowledge-changes = often", "retrieval +2; stacks that train -1",
           "an index is rebuilt in seconds when facts change; facts in weights are stale until the next training"),
    "C1": ("operational",
           f"release-cadence <= {FREQUENT_RELEASE_DAYS} days ("
           + ", ".join(f"{name} = {days}" for name, days in CADENCE_DAYS.items()) + ")",
           "stacks that train -1",
           "every release retrains and re-evaluates weights; prompt and index changes ship without training"),
    "E2": ("prior", f"examples < {FEW_EXAMPLES}", "adapter -2",
           "an adapter overfits a few dozen examples; a prompt uses them as few-shot turns"),
    "E3": ("prior", f"examples >= {MANY_EXAMPLES} and knowledge-changes != often", "adapter +2",
           "a stable task with thousands of examples is what LoRA learns well, with no per-request retrieval cost"),
    "E4": ("prior", f"examples >= {FULL_EXAMPLES}, gpu-hours >= {FULL_GPU_HOURS:g}, privacy != restricted",
           "full +1 (else full -2)",
           "all weights pay off only with much data and compute; otherwise LoRA reaches similar quality for less"),
    "L1": ("prior", f"latency-ms < {TIGHT_LATENCY_MS:g}", "retrieval -1",
           "retrieval adds an embedding, a search and top_k passages of prompt to every request"),
    "M1": ("measured", "report: a stack's CI overlaps the best stack's CI", "rank it with the best, by score then cost",
           "overlapping 95% CIs are no evidence that the dearer stack is better: prefer the cheaper"),
    "M2": ("measured", "report: a stack's CI lies wholly on the worse side of the best's", "rank it after the tied group",
           "measured to be worse than the best"),
}


def parse_cadence(value: str | int) -> int:
    """Days between releases: ``weekly``/``monthly``/``quarterly`` (any case) or a whole number of days >= 1,
    as an int or as text (``"14"``). Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a release cadence: {value!r}")
    if isinstance(value, int):
        days = value
    else:
        text = str(value).strip().lower()
        if text in CADENCE_DAYS:
            return CADENCE_DAYS[text]
        if not text.isdigit():  # no sign, no fraction: whole days
            raise ValueError(f"not a release cadence: {value!r}")
        days = int(text)
    if days < 1:
        raise ValueError(f"not a release cadence: {value!r}")
    return days


@dataclass
class Constraints:
    """What the team can spend and must respect. ``None`` = not given (the rules on it do not fire)."""

    examples: int | None = None
    privacy: str = "internal"
    latency_ms: float | None = None
    gpu_hours: float | None = None
    release_cadence: str | int | None = None  # weekly, monthly, quarterly or days; see parse_cadence
    knowledge_changes: str | None = None
    has_retrieval_source: bool | None = None  # from a recipe: does it name what retrieval searches?
    training: frozenset[str] | None = None  # strategies that train weights (None: ask the registered modalities)
    bars: dict[str, float] = field(default_factory=dict)  # from a recipe's eval.min

    def __post_init__(self) -> None:
        problems = []
        if self.privacy not in PRIVACY:
            problems.append(f"privacy {self.privacy!r} is not one of {', '.join(PRIVACY)}")
        if self.release_cadence is not None:
            try:
                days = parse_cadence(self.release_cadence)
            except ValueError:
                problems.append(f"release cadence {self.release_cadence!r} is not {CADENCE_FORMS}")
            else:  # normalised: a name in lower case, or the number of days
                name = str(self.release_cadence).strip().lower()
                self.release_cadence = name if name in CADENCE_DAYS else days
        if self.knowledge_changes is not None and self.knowledge_changes not in KNOWLEDGE:
            problems.append(f"knowledge changes {self.knowledge_changes!r} is not one of {', '.join(KNOWLEDGE)}")
        for name in ("examples", "latency_ms", "gpu_hours"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name.replace('_', '-')} must be >= 0 (got {value})")
        if problems:
            raise MmadaptError("; ".join(problems), fix="see mmadapt advise --help")

    @property
    def cadence_days(self) -> int | None:
        """Days between releases (weekly = 7, monthly = 30, quarterly = 91), or None when not given."""
        return None if self.release_cadence is None else parse_cadence(self.release_cadence)

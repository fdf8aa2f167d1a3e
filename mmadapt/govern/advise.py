"""Which stack to ship, and in which order to try the others: constraints + measurements -> advice.

A pure-Python rules engine. Every rule has an id; the table of rules and their thresholds is
:data:`mmadapt.govern.advise_rules.RULES`, and ``docs/advise.md`` shows it (the test suite checks
the two agree). Rules come in four kinds, applied in this order:

* ``hard``: exclude a stack (nothing to retrieve from -> no retrieval; no GPU -> nothing that trains;
  measured latency over the budget ...);
* ``operational``: add to or take from a stack's score for what it costs to run and govern
  (restricted data, knowledge that changes often, frequent releases). Always applied;
* ``prior``: what usually holds for quality and training cost when nothing is measured
  (few examples -> no full fine-tune, a weaker adapter; thousands of examples on a stable task
  -> adapter). Applied only to stacks without a measured primary metric: a measurement
  supersedes a prior;
* ``measured``: with a compare report, stacks whose 95% CI of the primary metric overlaps
  the best stack's are *tied with the best* and ranked first, by score and then by cost
  (no evidence that the dearer one is better -> the cheaper one); the others follow, best first.

Without a report, stacks are ranked by score, then by cost (cheapest first). A grid run of a report
(``compare --grid``) is a candidate of its own, by its label (``adapter[r=8,lr=0.001]``). Every
reason names its source: ``constraint:<option>``, ``measured:<report file>:<stack>.<figure>=<value>`` or,
for a model not run yet (``model=``), ``predicted:plan:<model>[<setup>].<figure>=<value>`` (rules F1, F2: what
fits on the devices; :mod:`mmadapt.govern.advise_evidence` gathers reports and predictions).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.errors import MmadaptError
from mmadapt.govern.advise_evidence import Predicted, latest_report, measured_costs, predict_costs, primary_metric_of
from mmadapt.govern.advise_evidence import read_report as read_report  # re-exported: callers read reports from here
from mmadapt.govern.advise_rules import (
    COST,
    DEFAULT_STACKS,
    FEW_EXAMPLES,
    FREQUENT_RELEASE_DAYS,
    FULL_EXAMPLES,
    FULL_GPU_HOURS,
    MANY_EXAMPLES,
    TIGHT_LATENCY_MS,
)
from mmadapt.govern.advise_rules import RULES as RULES  # the rules' table, re-exported: advise() applies it
from mmadapt.govern.advise_rules import Constraints as Constraints  # what the rules read, re-exported
from mmadapt.protocols import STACK_ORDER, get_modality, strategy_trains


@dataclass
class Reason:
    rule: str
    stacks: list[str]  # the stacks it touched ([] = about the advice as a whole)
    text: str
    sources: list[str]

    def __str__(self) -> str:
        where = f" ({', '.join(self.stacks)})" if self.stacks else ""
        return f"{self.rule}{where}: {self.text} [{'; '.join(self.sources)}]"


@dataclass
class Candidate:
    stack: str
    score: int = 0
    cost: int = 0
    excluded: bool = False
    measured: dict[str, Any] | None = None  # the report row
    tier: int = 0  # 0 = tied with the best measured stack (or unmeasured ranking), 1 = worse, 2 = no figure


@dataclass
class Advice:
    recommended: str | None
    alternatives: list[str]  # in the order to try them
    excluded: dict[str, list[str]]  # stack -> rule ids that excluded it
    reasons: list[Reason]
    scores: dict[str, int]
    primary_metric: str | None = None
    report: str | None = None
    warnings: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None  # the model plan priced (model, params_b, gpus, gpu_memory, steps)
    costs: list[dict[str, Any]] = field(default_factory=list)  # compute costs, each row's "source" predicted or measured

    @property
    def order(self) -> list[str]:
        return ([self.recommended] if self.recommended else []) + self.alternatives

    def reasons_for(self, stack: str) -> list[Reason]:
        return [r for r in self.reasons if stack in r.stacks or not r.stacks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- stacks


def parts(stack: str) -> set[str]:
    stack = stack.split("[", 1)[0].strip()  # a grid run's label: 'adapter[r=8,lr=0.001]' -> {'adapter'}
    return set() if stack == "base" else {p.strip() for p in stack.split("+") if p.strip()}


def trains(stack: str, training: frozenset[str]) -> bool:
    return bool(parts(stack) & training)


def stack_cost(stack: str) -> int:
    return sum(COST.get(p, 0) for p in parts(stack))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- the engine


def advise(
    constraints: Constraints,
    report: Mapping[str, Any] | None = None,
    *,
    report_name: str = "report.json",
    stacks: Sequence[str] | None = None,
    primary_metric: str | None = None,
    lower_is_better: Collection[str] | None = None,
    predicted: Predicted | None = None,
) -> Advice:
    """Apply the rules of :data:`RULES` to ``constraints`` (and a compare ``report``); return the advice.

    ``lower_is_better`` names the metrics where smaller is better (the modality's); None reads it
    from the report (``mmadapt compare`` writes it there). ``predicted``: what plan predicts for a model
    not run yet (:func:`mmadapt.govern.advise_evidence.predict_costs`): rules F1 and F2."""
    c = constraints
    reasons: list[Reason] = []
    excluded: dict[str, list[str]] = {}
    warnings: list[str] = []
    metric = primary_metric_of(report, primary_metric) if report else primary_metric

    if report:  # a candidate per row, by its label: a grid run ('adapter[r=8]') is one of its own
        named = {str(r.get("label") or r["stack"]): r for r in report["rows"]}
        cands = {s: Candidate(s, cost=stack_cost(s), measured=r) for s, r in named.items()}
    else:
        cands = {s: Candidate(s, cost=stack_cost(s)) for s in (stacks or DEFAULT_STACKS)}

    def measured_src(stack: str, key: str) -> str:
        return f"measured:{report_name}:{stack}.{key}={_fmt(cands[stack].measured.get(key))}"

    def has_figure(stack: str) -> bool:
        row = cands[stack].measured
        return bool(row) and metric is not None and row.get(metric) is not None

    def fire(rule: str, touched: list[str], text: str, sources: list[str], *, exclude: bool = False, delta: int = 0) -> None:
        touched = [s for s in touched if s in cands and not cands[s].excluded]
        if not touched:
            return
        for s in touched:
            if exclude:
                cands[s].excluded = True
                excluded.setdefault(s, []).append(rule)
            cands[s].score += delta
        reasons.append(Reason(rule, touched, text, sources))

    every = list(cands)
    retrieval = [s for s in every if "retrieval" in parts(s)]
    training_parts = c.training if c.training is not None else frozenset(n for n in STACK_ORDER if strategy_trains(n))
    training = [s for s in every if trains(s, training_parts)]
    adapters = [s for s in every if "adapter" in parts(s)]
    fulls = [s for s in every if "full" in parts(s)]
    n = c.examples

    # ---- hard rules (F1 first: what cannot run on the devices is the plainest reason)
    if predicted is not None:
        _plan_rules(predicted, c, fire, {"adapter": adapters, "full": fulls}, fitting=False)
    if c.has_retrieval_source is False:
        fire("D1", retrieval, "the recipe names nothing for retrieval to search", ["constraint:recipe.retrieval_source"], exclude=True)
    if n is not None and n == 0:
        fire("D2", training, "no training examples", ["constraint:examples=0"], exclude=True)
    if n is not None and n < FEW_EXAMPLES:
        fire("E1", [s for s in fulls if not has_figure(s)], f"{n} examples are too few to train every weight without memorising them",
             [f"constraint:examples={n}"], exclude=True)
    if c.gpu_hours is not None and c.gpu_hours == 0:
        fire("G1", training, "no GPU budget for training", ["constraint:gpu-hours=0"], exclude=True)
    if report:
        for s in every:
            row = cands[s].measured
            seconds = row.get("train_seconds")
            if c.gpu_hours is not None and seconds is not None and seconds / 3600.0 > c.gpu_hours:
                fire("G2", [s], f"one training run took {seconds / 3600.0:.2f} h, over the {c.gpu_hours:g} GPU-hour budget",
                     [measured_src(s, "train_seconds"), f"constraint:gpu-hours={c.gpu_hours:g}"], exclude=True)
            p95 = row.get("latency_p95_ms")
            if c.latency_ms is not None and p95 is not None and p95 > c.latency_ms:
                fire("L2", [s], f"p95 latency {p95:.0f} ms is over the {c.latency_ms:g} ms budget",
                     [measured_src(s, "latency_p95_ms"), f"constraint:latency-ms={c.latency_ms:g}"], exclude=True)
        if c.bars:
            missing = {}
            for s in every:
                row = cands[s].measured
                miss = [f"{m} {row[m]:.2f} < {bar:.2f}" if row.get(m) is not None else f"{m} not measured"
                        for m, bar in c.bars.items() if row.get(m) is None or row[m] < bar]
                if miss:
                    missing[s] = miss
            meeting = [s for s in every if s not in missing and not cands[s].excluded]
            if meeting:
                for s, miss in missing.items():
                    srcs = [measured_src(s, m) for m in c.bars if m in cands[s].measured] + ["constraint:recipe.eval.min"]
                    fire("B1", [s], f"misses eval.min ({'; '.join(miss)})", srcs, exclude=True)
            else:
                warnings.append(
                    "no stack meets eval.min ("
                    + ", ".join(f"{m} >= {b:.2f}" for m, b in c.bars.items())
                    + "): the advice ranks what was measured; more or better data, or a stronger stack, is needed"
                )

    if predicted is not None:  # F2 after the hard rules: only stacks still standing are told what they cost
        _plan_rules(predicted, c, fire, {"adapter": adapters, "full": fulls}, fitting=True)

    # ---- operational rules
    if c.privacy == "restricted":
        fire("P1", training, "weights memorise training data: a trained artifact becomes restricted data too, "
             "and forgetting a record means retraining",
             ["constraint:privacy=restricted"], delta=-3)
        fire("P1", retrieval, "an index keeps restricted records deletable and behind access control "
             "(enforce the data's permissions at retrieval time)", ["constraint:privacy=restricted"], delta=+1)
    if c.knowledge_changes == "often":
        fire("K1", retrieval, "facts change often: re-index in seconds instead of retraining",
             ["constraint:knowledge-changes=often"], delta=+2)
        fire("K1", training, "facts learnt into weights go stale until the next training run",
             ["constraint:knowledge-changes=often"], delta=-1)
    days = c.cadence_days
    if days is not None and days <= FREQUENT_RELEASE_DAYS:
        fire("C1", training, f"a release every {days} days means training and re-evaluating weights for each one",
             [f"constraint:release-cadence={c.release_cadence}"], delta=-1)

    # ---- priors (superseded by a measured primary metric)
    unmeasured = [s for s in every if not has_figure(s)]
    if n is not None and n < FEW_EXAMPLES:
        fire("E2", [s for s in adapters if s in unmeasured], f"{n} examples: an adapter would overfit; use them as few-shot turns",
             [f"constraint:examples={n}"], delta=-2)
    if n is not None and n >= MANY_EXAMPLES and c.knowledge_changes != "often":
        fire("E3", [s for s in adapters if s in unmeasured],
             f"{n} examples of a stable task: what LoRA learns well, with no per-request retrieval cost",
             [f"constraint:examples={n}"] + ([f"constraint:knowledge-changes={c.knowledge_changes}"] if c.knowledge_changes else []),
             delta=+2)
    full_pays = (
        n is not None and n >= FULL_EXAMPLES and c.gpu_hours is not None and c.gpu_hours >= FULL_GPU_HOURS
        and c.privacy != "restricted"
    )
    if n is not None or c.gpu_hours is not None:
        if full_pays:
            fire("E4", [s for s in fulls if s in unmeasured], "enough data and compute for full fine-tuning to pay off",
                 [f"constraint:examples={n}", f"constraint:gpu-hours={c.gpu_hours:g}"], delta=+1)
        else:
            srcs = [f"constraint:examples={n}"] if n is not None else []
            srcs += [f"constraint:gpu-hours={c.gpu_hours:g}"] if c.gpu_hours is not None else []
            fire("E4", [s for s in fulls if s in unmeasured],
                 f"full fine-tuning pays off from ~{FULL_EXAMPLES} examples and ~{FULL_GPU_HOURS:g} GPU-hours; LoRA first",
                 srcs, delta=-2)
    if c.latency_ms is not None and c.latency_ms < TIGHT_LATENCY_MS:
        fire("L1", [s for s in retrieval if s in unmeasured],
             f"a {c.latency_ms:g} ms budget is tight for an extra embedding, search and longer prompt",
             [f"constraint:latency-ms={c.latency_ms:g}"], delta=-1)

    # ---- ranking
    live = [cands[s] for s in every if not cands[s].excluded]
    if report and metric is not None:
        figured = [x for x in live if has_figure(x.stack)]
        for x in live:
            if not has_figure(x.stack):
                x.tier = 2
        if figured:
            lower = lower_is_better if lower_is_better is not None else (report.get("lower_is_better") or ())
            sign = -1.0 if metric in lower else 1.0  # WER-like metrics: smaller is better
            best = max(figured, key=lambda x: (sign * x.measured[metric], -x.cost))
            b_lo, b_hi = _ci(best.measured, metric)
            for x in figured:
                lo, hi = _ci(x.measured, metric)
                x.tier = 0 if hi >= b_lo and lo <= b_hi else 1
            live.sort(key=lambda x: _rank_key(x, metric, sign))
            tied = [x for x in live if x.tier == 0]
            chosen = tied[0]
            if chosen.stack != best.stack:
                fire("M1", [chosen.stack, best.stack],
                     f"{metric} of {chosen.stack} {_val_ci(chosen.measured, metric)} overlaps {best.stack} "
                     f"{_val_ci(best.measured, metric)}: no evidence {best.stack} is better; {chosen.stack} "
                     + ("is cheaper" if chosen.cost < best.cost else "fits the constraints better")
                     + f" (train_seconds {_fmt(chosen.measured.get('train_seconds'))} vs {_fmt(best.measured.get('train_seconds'))})",
                     [measured_src(chosen.stack, metric), measured_src(best.stack, metric),
                      measured_src(chosen.stack, "train_seconds"), measured_src(best.stack, "train_seconds")])
            else:
                others = [x.stack for x in tied if x.stack != best.stack]
                fire("M1", [best.stack],
                     f"best measured {metric} {_val_ci(best.measured, metric)}"
                     + (f", tied within CIs with {', '.join(others)}" if others else ", no other stack within its CI"),
                     [measured_src(best.stack, metric)])
            worse = [x.stack for x in live if x.tier == 1]
            if worse:
                side = "above" if sign < 0 else "below"
                fire("M2", worse, f"{metric} CI wholly {side} {best.stack}'s {_val_ci(best.measured, metric)}",
                     [measured_src(s, metric) for s in worse])
    else:
        live.sort(key=lambda x: (-x.score, x.cost))

    order = [x.stack for x in live]
    if not order:
        warnings.append("every stack is excluded by the constraints: relax one (see the reasons)")
    return Advice(
        recommended=order[0] if order else None,
        alternatives=order[1:],
        excluded=excluded,
        reasons=reasons,
        scores={s: cands[s].score for s in every},
        primary_metric=metric,
        report=report_name if report else None,
        warnings=warnings,
        plan=None if predicted is None else predicted.summary(),
        costs=(predicted.cost_rows() if predicted else []) + (measured_costs(report, report_name) if report else []),
    )


def _plan_rules(p: Predicted, c: Constraints, fire, stacks_with: dict[str, list[str]], *, fitting: bool) -> None:
    """F1 (``fitting=False``): a stack whose training part fits no setup on the devices is excluded; F2: the
    others are told the fastest setup that fits (the recipe keys to set for it) and its cost, as plan predicts."""
    where = f"{p.gpus} x {p.gpu_memory}"
    base = [f"constraint:gpus={p.gpus}", f"constraint:gpu-memory={p.gpu_memory}"]
    names = {"adapter": "an adapter (LoRA or QLoRA)", "full": "full fine-tuning"}
    for part, stacks in stacks_with.items():
        best, lean = p.best(part), p.leanest(part)
        if lean is None:
            continue
        if best is None and not fitting:
            fire("F1", stacks, f"{names[part]} of {p.model} ({p.params_b:.1f} B) fits no setup on {where}: the leanest, "
                 f"{lean.setup}, needs {lean.peak_gib:.1f} GiB per device (predicted)",
                 [f"predicted:plan:{p.model}[{lean.setup}].peak_gib={lean.peak_gib:.1f}", *base], exclude=True)
        if best is None or not fitting:
            continue
        short = sorted({r.method for r in p.rows if r.part == part} - {r.method for r in p.rows if r.part == part and r.fits})
        text = (f"{p.model} ({p.params_b:.1f} B) fits on {where} as {best.setup}: {best.peak_gib:.1f} GiB per device, "
                f"~{best.step_seconds:.2g} s a step, ~{best.run_gpu_hours:.2g} GPU-hours for {p.steps} steps (predicted)")
        if c.gpu_hours is not None and best.run_gpu_hours > c.gpu_hours:
            text += f", over the {c.gpu_hours:g} GPU-hour budget"
        if best.knobs:
            text += f"; set {', '.join(best.knobs)}"
        for method in short:
            leanest = min((r for r in p.rows if r.method == method), key=lambda r: r.peak_gib)
            text += f"; {method} fits no setup ({leanest.peak_gib:.1f} GiB at best)"
        fire("F2", stacks, text, [f"predicted:plan:{p.model}[{best.setup}].peak_gib={best.peak_gib:.1f}",
                                  f"predicted:plan:{p.model}[{best.setup}].step_s={best.step_seconds:.2g}", *base])


def _rank_key(x: Candidate, metric: str, sign: float = 1.0) -> tuple:
    """Tied with the best: by score, then a-priori cost, then measured cost. Worse: by the metric. No figure: last."""
    row = x.measured or {}
    if x.tier == 0:
        return (0, -x.score, x.cost, row.get("train_seconds") or 0.0, row.get("artifact_bytes") or 0)
    if x.tier == 1:
        return (1, -sign * float(row[metric]), -x.score, x.cost, 0)
    return (2, -x.score, x.cost, 0.0, 0)


def _ci(row: Mapping[str, Any], metric: str) -> tuple[float, float]:
    value = float(row[metric])
    ci = row.get(f"{metric}_ci") or [None, None]
    lo = value if ci[0] is None else float(ci[0])
    hi = value if len(ci) < 2 or ci[1] is None else float(ci[1])
    return lo, hi


def _val_ci(row: Mapping[str, Any], metric: str) -> str:
    lo, hi = _ci(row, metric)
    return f"{float(row[metric]):.2f} [{lo:.2f}, {hi:.2f}]"


def advise_recipe(
    recipe=None,
    *,
    examples: int | None = None,
    privacy: str = "internal",
    latency_ms: float | None = None,
    gpu_hours: float | None = None,
    release_cadence: str | None = None,
    knowledge_changes: str | None = None,
    report_path: str | Path | None = None,
    model: str | None = None,
    gpus: int | None = None,
    gpu_memory: str | None = None,
) -> Advice:
    """Advice for a recipe (optional): its train size, retrieval source and bars fill in what is not given;
    its newest compare report is used when ``report_path`` is None. With ``model`` (or ``gpus`` /
    ``gpu_memory``: the recipe's base_model), plan's predicted compute costs for training it on ``gpus``
    devices of ``gpu_memory`` (default 1 x 80GiB) join the evidence (rules F1, F2)."""
    has_source, bars, stacks, primary, lower, training = None, {}, None, None, None, None
    if recipe is not None:
        modality = get_modality(recipe.modality)
        primary = modality.primary_metric
        lower = modality.lower_is_better
        has_source = modality.retrieval_source(recipe) is not None
        training = frozenset(name for name, cls in modality.strategies.items() if cls.trains)
        bars = dict(recipe.eval.min)
        available = [s for s in STACK_ORDER if s in modality.strategies]
        stacks = [s for s in DEFAULT_STACKS if parts(s) <= set(available)]
        if examples is None:
            examples = len(modality.load_data(recipe).train)
        if report_path is None:
            report_path = latest_report(recipe.output_dir, recipe.name)
    if examples is None:
        raise MmadaptError("how many training examples?", fix="pass --examples N (or a RECIPE to count them)")
    constraints = Constraints(
        examples=examples, privacy=privacy, latency_ms=latency_ms, gpu_hours=gpu_hours,
        release_cadence=release_cadence, knowledge_changes=knowledge_changes, has_retrieval_source=has_source, bars=bars,
        training=training,
    )
    report = read_report(report_path) if report_path else None
    predicted = None
    if model is not None or gpus is not None or gpu_memory is not None:
        if model is None and recipe is None:
            raise MmadaptError("--gpus and --gpu-memory price a model", fix="add --model CONFIG_OR_ID (or a RECIPE: its base_model)")
        predicted = predict_costs(model or recipe.base_model, recipe, gpus=gpus or 1, gpu_memory=gpu_memory or "80GiB")
    return advise(
        constraints, report, report_name=Path(report_path).name if report_path else "report.json",
        stacks=stacks, primary_metric=primary, lower_is_better=lower, predicted=predicted,
    )

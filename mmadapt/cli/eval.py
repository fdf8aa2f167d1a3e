"""`mmadapt eval`: score versions on an evaluation suite (eval/*.yaml), or every suite on every recipe."""

from __future__ import annotations

import json

import click

from mmadapt.cli.common import output_dir_option


@click.command("eval")
@click.argument("suite", required=False, type=click.Path())
@click.argument("targets", nargs=-1, metavar="VERSION_OR_RECIPE...")
@click.option("--all", "run_every", is_flag=True, help="Every suite in --suites on the current version of every run recipe of its modality.")
@click.option("--suites", "suites_dir", default="eval", show_default=True, help="Where --all finds suites.")
@click.option("--recipes", "recipes_dir", default="recipes", show_default=True, help="Where --all finds recipes.")
@output_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (same exit codes).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_suite(suite, targets, run_every, suites_dir, recipes_dir, output_dir, as_json, quiet) -> None:
    """Score versions on an evaluation suite: metrics with 95% CIs, pass/fail per bar.

    A target is a version folder (runs/NAME/vNNNN), a recipe (its current version) or
    RECIPE@vNNNN. With two or more targets, each is compared with the first on the same examples
    (paired bootstrap CI). Exit code 0: every bar met; 1: a bar missed; 2: bad input.

    \b
    Examples:
      mmadapt eval eval/zentrix-regression.yaml recipes/text/zentrix-support.yaml
      mmadapt eval eval/zentrix-regression.yaml runs/zentrix-support/v0001 runs/zentrix-support/v0002
      mmadapt eval --all
    """
    from mmadapt.errors import MmadaptError

    if run_every:
        if suite or targets:
            raise MmadaptError("--all takes no suite or targets", fix="mmadapt eval --all, or mmadapt eval SUITE TARGET...")
        _all(suites_dir, recipes_dir, not quiet, as_json)
        return
    if not suite or not targets:
        raise MmadaptError("a suite and at least one target are needed", fix="mmadapt eval SUITE VERSION_OR_RECIPE... (or --all)")
    from mmadapt.govern.suites import run_suite

    result = run_suite(suite, list(targets), output_dir=output_dir, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print(result)
    click.get_current_context().exit(0 if result.passed else 1)


def _print(result) -> None:
    from mmadapt.govern.report import slice_rows, table

    s = result.suite
    click.echo(f"suite {s.name} ({s.modality}): {len(s.sets)} set(s), bars: "
               + (", ".join(f"{m} {s.bar_text(m)}" for m in s.bars) or "none"))
    for target in result.targets:
        click.echo(f"\n{target.target} ({target.recipe} {target.version}): {'PASS' if target.passed else 'FAIL'}")
        rows = []
        for one in target.sets:
            for metric in s.metrics:
                if metric not in one.metrics:
                    continue
                lo, hi = one.ci.get(metric, (None, None))
                missed = [f for f in one.failures if f.startswith(metric + " ")]
                bar = s.bar_text(metric) if metric in s.bars else ""
                rows.append({"set": f"{one.set} (n={one.examples})", "metric": metric, "value": one.metrics[metric],
                             "ci_low": lo, "ci_high": hi, "bar": bar, "": ("FAIL" if missed else "pass") if bar else ""})
        click.echo(table(rows, ["set", "metric", "value", "ci_low", "ci_high", "bar", ""]))
        for one in target.sets:
            if one.slices:
                click.echo(f"{one.set} by slice ({one.slices['by']}), 95% CI:")
                click.echo(table(*slice_rows(one.slices)))
    for (index, set_name), diffs in result.diffs.items():
        first, other = result.targets[0], result.targets[index]
        click.echo(f"\n{other.target} - {first.target} on {set_name} (paired, 95% bootstrap CI)")
        rows = [{"metric": d.metric + ("" if d.higher_is_better else " (lower is better)"), "diff": d.diff,
                 "ci_low": d.ci_low, "ci_high": d.ci_high, "p_sign": d.p_sign, "verdict": d.verdict} for d in diffs]
        click.echo(table(rows, ["metric", "diff", "ci_low", "ci_high", "p_sign", "verdict"]))


def _all(suites_dir: str, recipes_dir: str, progress: bool, as_json: bool) -> None:
    from mmadapt.govern.report import table
    from mmadapt.govern.suites import run_all

    result = run_all(suites_dir, recipes_dir, progress=progress, announce=lambda what: click.echo(f"scoring {what}", err=True))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        click.get_current_context().exit(0 if result.passed else 1)
    for path, why in result.skipped:
        click.echo(f"skipped {path}: {why}")
    rows = [{"suite": r.suite, "recipe": r.recipe, "version": r.version, "result": "pass" if r.passed else "FAIL",
             "figures": ", ".join(f"{m} {r.metrics[m]:.3f}" for m in r.bars if m in r.metrics),
             "missed": "; ".join(r.failures)} for r in result.rows]
    if rows:
        click.echo(table(rows, ["suite", "recipe", "version", "result", "figures", "missed"]))
    else:
        click.echo("nothing to evaluate: no recipe of a suite's modality has been run")
    click.get_current_context().exit(0 if result.passed else 1)

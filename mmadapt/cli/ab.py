"""`mmadapt ab`: a paired test of two versions of a recipe on its eval split."""

from __future__ import annotations

import json

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--a", "version_a", default=None, help="The baseline version (e.g. v0001, or current).")
@click.option("--b", "version_b", default=None, help="The challenger version.")
@click.option("--from-log", is_flag=True, help="Test on live feedback from the serve log (runs/<name>/serve/) instead of the eval "
              "split; without --a/--b: the two versions with feedback.")
@click.option("--test", "method", type=click.Choice(["bootstrap", "sign"]), default="bootstrap", show_default=True,
              help="Paired bootstrap CI or exact sign test decides the verdict.")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100), help="Bootstrap resamples.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ab(recipe, version_a, version_b, from_log, method, resamples, overrides, as_json, quiet) -> None:
    """A/B test two versions of a recipe on its eval split, example by example (or on live feedback).

    Prints, per metric, B - A with its 95% paired-bootstrap CI, the sign test p-value and a
    verdict for B: better, worse, or no evidence. With --from-log the metric is the feedback
    score clients sent for each version's answers; the k-th rated answer of A is paired with
    the k-th of B.

    \b
    Example:
      mmadapt ab recipes/text/zentrix-support.yaml --a v0001 --b v0002
      mmadapt ab recipes/text/zentrix-support.yaml --from-log
    """
    from mmadapt.govern.ab import ab_from_log, ab_test
    from mmadapt.govern.report import table

    if not from_log and (version_a is None or version_b is None):
        raise click.UsageError("--a and --b are required (or --from-log: live feedback of the served versions)")
    parsed = _load(recipe, overrides)
    if from_log:
        result = ab_from_log(parsed, version_a, version_b, method=method, resamples=resamples)
    else:
        result = ab_test(parsed, version_a, version_b, method=method, resamples=resamples, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    what = (f"{result.examples} pairs of rated live requests ({result.unpaired} unpaired left out)" if result.source == "log"
            else f"{result.examples} eval examples")
    click.echo(f"{result.recipe}: A = {result.a}, B = {result.b}, {what}, {method} test")
    rows = _diff_rows(result.metrics)
    columns = ["metric", "A", "B", "B-A", "ci_low", "ci_high", "p_sign", "B wins", "A wins", "verdict"]
    click.echo(table(rows, columns))
    if result.slices:
        shown = [{result.slice_by: value, "n": m.n, **row}
                 for value, diffs in result.slices.items() for m, row in zip(diffs, _diff_rows(diffs))]
        click.echo(f"\nby slice ({result.slice_by}), paired 95% CI on each slice's examples:")
        click.echo(table(shown, [result.slice_by, "n", *columns]))
    p = result.primary
    click.echo(
        f"\n{p.metric}: B - A = {p.diff:+.3f} [95% CI {p.ci_low:+.3f}, {p.ci_high:+.3f}] -> B is {p.verdict}"
        + ("" if p.verdict == "no evidence" else " than A")
    )


def _diff_rows(diffs) -> list[dict]:
    return [
        {
            "metric": m.metric + ("" if m.higher_is_better else " (lower is better)"),
            "A": m.mean_a, "B": m.mean_b, "B-A": m.diff, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "p_sign": m.p_sign, "B wins": m.b_wins, "A wins": m.a_wins, "verdict": m.verdict,
        }
        for m in diffs
    ]

"""`mmadapt ab`: a paired test of two versions of a recipe on its eval split."""

from __future__ import annotations

import json

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
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

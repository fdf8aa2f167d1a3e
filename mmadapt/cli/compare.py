"""`mmadapt compare`: several stacks on the same data and seed, one decision table."""

from __future__ import annotations

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--stacks", default=None, help="Comma-separated stacks, e.g. base,prompt,retrieval,adapter,full,adapter+retrieval.")
@click.option(
    "--grid", "grid", multiple=True, metavar="KEY=V1,V2",
    help="Sweep a setting: each stack it applies to runs once per value, e.g. --grid adapter.r=8,16 "
    "(repeatable: every combination; replaces the recipe's compare.grid). Keys: <strategy>.<key> (stacks with it), "
    "train.<key> (stacks that train), inference.<key> (all but base); base runs once.",
)
@click.option(
    "--parallel", type=click.IntRange(1, 256), default=1, show_default=True, metavar="N",
    help="Run up to N stacks at once, each in its own process: one GPU each where there are GPUs, "
    "else an even share of the CPU cores. The report is the same as a sequential run's.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Resume each stack's training from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compare(
    recipe: str, stacks: str | None, grid: tuple[str, ...], parallel: int, overrides: tuple[str, ...], resume: bool, quiet: bool
) -> None:
    """Run several stacks on the same data and seed; print and write the decision table.

    Writes report.md, report.json and report.png under <output_dir>/<name>/compare/<time>/.
    Stacks, grid keys and values are all checked before anything runs.

    \b
    Examples:
      mmadapt compare recipes/text/zentrix-support.yaml
      mmadapt compare recipes/text/zentrix-support.yaml --stacks base,prompt,prompt+retrieval --parallel 3
      mmadapt compare recipes/text/zentrix-support.yaml --stacks base,adapter --grid adapter.r=8,16 --grid adapter.train.lr=1e-3,2e-3
    """
    from mmadapt.govern.compare import compare as run_compare
    from mmadapt.govern.compare import display_rows, paired_rows, ranked_rows, sliced_rows
    from mmadapt.govern.report import table
    from mmadapt.govern.sweep import parse_grid
    from mmadapt.protocols import get_modality

    parsed = _load(recipe, overrides)
    chosen = [s.strip() for s in stacks.split(",") if s.strip()] if stacks else None
    swept = parse_grid(grid) if grid else None
    result = run_compare(parsed, chosen, grid=swept, parallel=parallel, resume=resume, progress=not quiet)
    shown, columns = display_rows(result.rows)
    click.echo(table(shown, columns))
    sliced, sliced_columns = sliced_rows(result.rows)
    if sliced:
        click.echo(f"\nby slice ({parsed.eval.slice_by}), 95% CI:")
        click.echo(table(sliced, sliced_columns))
    paired, paired_columns = paired_rows(result.rows)
    if paired:
        click.echo("\npaired difference to base (same examples and seeds), 95% CI:")
        click.echo(table(paired, paired_columns))
    ranked, ranked_columns = ranked_rows(result.rows, result.primary_metric)
    if ranked:
        direction = "lower" if result.primary_metric in get_modality(parsed.modality).lower_is_better else "higher"
        click.echo(f"\nranked by {result.primary_metric} ({direction} is better); tied = 95% CI overlaps the best one's:")
        click.echo(table(ranked, ranked_columns))
    click.echo(f"\nreport: {result.report_dir / 'report.md'}")

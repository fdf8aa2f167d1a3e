"""`mmadapt compare`: several stacks on the same data and seed, one decision table."""

from __future__ import annotations

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
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

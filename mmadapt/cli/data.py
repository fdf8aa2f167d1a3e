"""`mmadapt data validate`: check every file of a recipe's data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmadapt.cli.common import SET_HELP, _load


@click.group()
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

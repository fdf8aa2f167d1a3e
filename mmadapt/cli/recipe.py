"""`mmadapt recipe validate`: check a recipe against the schema."""

from __future__ import annotations

import click

from mmadapt.cli.common import SET_HELP, _load


@click.group()
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
    if parsed.compare.grid:  # the grid's keys and values, against every stack compare would run
        from mmadapt.govern.sweep import default_stacks, plan

        plan(parsed, parsed.compare.stacks or default_stacks(parsed), parsed.compare.grid)
    if resolved:
        import yaml

        click.echo(yaml.safe_dump(parsed.resolved(), sort_keys=False, allow_unicode=True))
    else:
        click.echo(f"ok: {parsed.name} ({parsed.modality}, stack {'+'.join(parsed.stack)})")

"""`mmadapt report`: write a recipe's history (versions, metrics over time, audit log, plot)."""

from __future__ import annotations

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command("report")
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

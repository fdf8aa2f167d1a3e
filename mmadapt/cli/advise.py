"""`mmadapt advise`: which stack to ship, and the order to try the others (rules in docs/advise.md)."""

from __future__ import annotations

import json

import click

from mmadapt.cli.common import SET_HELP, _load
from mmadapt.errors import MmadaptError


@click.command()
@click.argument("recipe", required=False, type=click.Path())
@click.option("--examples", type=click.IntRange(min=0), default=None, help="Labelled training examples (default: the recipe's train split).")
@click.option("--privacy", type=click.Choice(["public", "internal", "restricted"]), required=True, help="How sensitive the training data is.")
@click.option("--latency-ms", type=click.FloatRange(min=0), required=True, help="p95 latency budget per request.")
@click.option("--gpu-hours", type=click.FloatRange(min=0), required=True, help="GPU hours available per training run (0 = none).")
@click.option("--release-cadence", required=True, metavar="[weekly|monthly|quarterly|DAYS]",
              help="How often a new version ships: weekly, monthly, quarterly, or a number of days (e.g. 14).")
@click.option("--knowledge-changes", type=click.Choice(["often", "rarely"]), default=None, help="How often the facts behind answers change.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="report.json from mmadapt compare (default: the recipe's newest one, if any).")
@click.option("--model", "model_ref", default=None, metavar="CONFIG_OR_ID",
              help="Price training a model not run yet, as mmadapt plan predicts it: a config.json, a model folder or id, "
                   "llama-3-8b / llama-3-70b (with --gpus / --gpu-memory alone: the recipe's base_model).")
@click.option("--gpus", type=click.IntRange(min=1, max=4096), default=None, help="Devices to train on, for --model (default 1).")
@click.option("--gpu-memory", default=None, help="Memory of one device, for --model (default 80GiB).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON.")
def advise(recipe, examples, privacy, latency_ms, gpu_hours, release_cadence, knowledge_changes, report_path, model_ref, gpus, gpu_memory,
           overrides, as_json) -> None:
    """Recommend a stack, and the order to try the others, from your constraints and measurements.

    Every reason names its source: a constraint you gave, a figure of the compare report, or, with
    --model, what mmadapt plan predicts for training that model on --gpus x --gpu-memory (what fits,
    peak memory per device, step-time order; labelled "predicted (plan)"). The rules are in docs/advise.md.

    \b
    Examples:
      mmadapt advise --examples 40 --privacy restricted --latency-ms 2000 --gpu-hours 10 --release-cadence quarterly
      mmadapt advise recipes/text/zentrix-support.yaml --privacy internal --latency-ms 800 \\
          --gpu-hours 4 --release-cadence weekly --report runs/zentrix-support/compare/<time>/report.json
      mmadapt advise recipes/text/lora.yaml --privacy internal --latency-ms 2000 --gpu-hours 10 \\
          --release-cadence monthly --model llama-3-70b --gpus 1 --gpu-memory 80GiB
    """
    from mmadapt.govern.advise import advise_recipe
    from mmadapt.govern.advise_render import render
    from mmadapt.govern.advise_rules import CADENCE_FORMS, parse_cadence

    try:
        parse_cadence(release_cadence)
    except ValueError:
        raise MmadaptError(f"--release-cadence {release_cadence!r} is not {CADENCE_FORMS}") from None
    parsed = _load(recipe, overrides) if recipe else None
    result = advise_recipe(
        parsed, examples=examples, privacy=privacy, latency_ms=latency_ms, gpu_hours=gpu_hours,
        release_cadence=release_cadence, knowledge_changes=knowledge_changes, report_path=report_path,
        model=model_ref, gpus=gpus, gpu_memory=gpu_memory,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(render(result))

"""`mmadapt drift`: how far new inputs have moved from the training data."""

from __future__ import annotations

import json
import sys

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--inputs", "new_data", default=None, type=click.Path(),
              help="New inputs shaped like the recipe's eval split (a JSONL file; speech: an audio folder with "
                   "metadata.jsonl), or a .txt file of one input a line.")
@click.option("--from-log", is_flag=True, help="The new inputs are the served requests (runs/<name>/serve/requests.jsonl).")
@click.option("--threshold", type=float, default=None, help="MMD^2 above which inputs drifted (default: calibrated on train).")
@click.option("--embedder", default=None, help="Embedder reference (default: the modality's choice for the recipe, or embedded:minilm-l6).")
@click.option("--fail-on-drift", is_flag=True, help="Exit with code 1 when drift is flagged (for CI and cron jobs).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def drift(recipe, new_data, from_log, threshold, embedder, fail_on_drift, overrides, as_json) -> None:
    """How far new inputs have moved from the training data; flags retraining.

    \b
    Example:
      mmadapt drift recipes/text/zentrix-support.yaml --inputs last-week-questions.txt
      mmadapt drift recipes/speech/domain-vocab.yaml --inputs new-calls/   # transcripts stand for the clips
      mmadapt drift recipes/text/zentrix-support.yaml --from-log          # what `mmadapt serve` was asked
    """
    from mmadapt.govern.drift import drift as run_drift
    from mmadapt.govern.report import table

    if (new_data is None) == (not from_log):
        raise click.UsageError("pass --inputs PATH or --from-log (one of them)")
    parsed = _load(recipe, overrides)
    result = run_drift(parsed, new_data, threshold=threshold, embedder=embedder, from_log=from_log)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{result.recipe}: {result.n_new} new inputs against {result.n_train} train inputs ({result.embedder})")
        click.echo(table([
            {"signal": s.name, "value": s.value, "threshold": s.threshold, "from": s.source, "drifted": "yes" if s.drifted else "no"}
            for s in result.signals
        ], ["signal", "value", "threshold", "from", "drifted"]))
        click.echo(f"mean-embedding cosine distance: {result.mean_cosine_distance:.4f}; "
                   f"far = nearest train similarity < {result.nn_similarity_cut:.3f}")
        if result.new_words:
            click.echo("unseen words: " + ", ".join(f"{w} ({c})" for w, c in result.new_words))
        for text, sim in result.far_examples:
            click.echo(f"  far ({sim:.2f}): {text[:100]}")
        click.echo("verdict: " + ("DRIFT: retrain or extend the data (" + ", ".join(s.name for s in result.signals if s.drifted) + ")"
                                   if result.drifted else "no drift beyond what the training data varies by itself"))
    if fail_on_drift and result.drifted:
        sys.exit(1)

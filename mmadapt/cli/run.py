"""`mmadapt run`, `ask`, `export`: fit a recipe's stack, use a saved artifact, write it for serving."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from mmadapt.cli.common import SET_HELP, _load, _output_errors


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint of this recipe.")
@click.option("--show", default=3, show_default=True, help="How many eval answers to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of tables.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--trust-remote-pickle",
    is_flag=True,
    help="Allow a local model whose weights are pickle files (.bin/.pt); they can run code when loaded. "
    "Sets MMADAPT_TRUST_REMOTE_PICKLE=1 for this run.",
)
def run(recipe: str, overrides: tuple[str, ...], resume: bool, show: int, as_json: bool, quiet: bool, trust_remote_pickle: bool) -> None:
    """Fit the recipe's stack, evaluate it, and write a new artifact version.

    \b
    Examples:
      mmadapt run recipes/text/zentrix-support.yaml
      mmadapt run recipes/text/zentrix-support.yaml --set strategies.retrieval.top_k=5
      mmadapt run recipes/text/lora.yaml --resume
      mmadapt run my-recipe.yaml --trust-remote-pickle   # a local model with .bin weights only
    """
    from mmadapt.engine.runner import run as run_recipe
    from mmadapt.govern.report import human_bytes, slice_rows, table
    from mmadapt.protocols import get_modality

    if trust_remote_pickle:
        from mmadapt.models.resolve import TRUST_PICKLE_ENV

        os.environ[TRUST_PICKLE_ENV] = "1"  # read by the model loaders (models/resolve.py: pickle_trusted)
    parsed = _load(recipe, overrides)
    if not as_json:
        click.echo(f"recipe {parsed.name}: {parsed.modality}, stack {'+'.join(parsed.stack)}, base {parsed.base_model}")
    with _output_errors(Path(parsed.output_dir) / parsed.name):
        result = run_recipe(parsed, resume=resume, progress=not quiet)
    if result is None:  # a rank other than 0 of a multi-process run: rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
        return
    modality = get_modality(parsed.modality)
    for example, pred in list(zip(result.evaluation.examples, result.evaluation.predictions))[:show]:
        click.echo("\n" + modality.show(example.input, pred))
    metrics = result.metrics
    ci = result.evaluation.ci
    click.echo("\nevaluation (95% bootstrap CI)")
    click.echo(
        table(
            [{"metric": k, "value": v, "ci_low": ci.get(k, (None,))[0], "ci_high": ci.get(k, (None, None))[1]} for k, v in metrics.items()],
            ["metric", "value", "ci_low", "ci_high"],
        )
    )
    if result.evaluation.slices:
        click.echo(f"\nby slice ({result.evaluation.slices['by']}), 95% CI")
        click.echo(table(*slice_rows(result.evaluation.slices)))
    costs = dict(result.costs)
    costs["artifact_bytes"] = human_bytes(costs.get("artifact_bytes"))
    click.echo("\ncosts")
    click.echo(table([{"cost": k, "value": v} for k, v in costs.items()], ["cost", "value"]))
    click.echo(f"\nartifact: {result.version_dir}")


@click.command()
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--vocabulary", type=click.Path(dir_okay=False), default=None,
              help="A vocabulary file (one term a line) for these inputs instead of the artifact's "
              "(modalities whose option_keys name `vocabulary`: speech).")
def ask(version_dir: str, inputs: tuple[str, ...], vocabulary: str | None) -> None:
    """Load a saved artifact and predict for INPUTS (questions, audio files, prompts).

    \b
    Examples:
      mmadapt ask runs/zentrix-support/v0001 "Which port does the Zentrix gateway use?"
      mmadapt ask runs/speech-domain-vocab/v0001 call.wav --vocabulary customer-terms.txt
    """
    from mmadapt.engine.artifact import read_manifest
    from mmadapt.engine.runner import load_artifact
    from mmadapt.protocols import get_modality

    modality = get_modality(read_manifest(Path(version_dir))["modality"])
    options = {"vocabulary": vocabulary} if vocabulary else {}
    requests = [modality.request_input(item, options, vocabulary or "--vocabulary") for item in inputs]  # bad options: exit 2 before loading
    loaded = load_artifact(version_dir)
    for item, pred in zip(inputs, loaded.predictor.predict(requests)):
        click.echo(loaded.modality.show(item, pred))


@click.command()
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path())
@click.option("--merge/--no-merge", default=True, show_default=True,
              help="Merge a LoRA into the base weights (one plain model folder); --no-merge copies the parts as they are.")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="A merged model format (transformers, the default; speech: ct2, a CTranslate2 folder for faster-whisper; "
                   "image: pipeline, the default) or an adapter format written instead of merging (image LoRA: diffusers | kohya).")
def export(version_dir: str, out_dir: str, merge: bool, fmt: str | None) -> None:
    """Write VERSION_DIR as a model folder for serving stacks that do not load adapters.

    The LoRA is merged into the base weights (safetensors, with the tokenizer or processor);
    what no weight holds (system prompt, retrieval index) is copied to OUT_DIR/mmadapt/. The
    folder loads with plain from_pretrained and works as another recipe's base_model.

    \b
    Example:
      mmadapt export runs/zentrix-lora/v0001 serving/zentrix-lora --merge
      mmadapt export runs/speech-lora/v0001 serving/speech-ct2 --format ct2
      mmadapt export runs/brand-style/v0003 exports/brand-kohya --format kohya
    """
    from mmadapt.engine.export import export as export_version

    with _output_errors(Path(out_dir)):
        out = export_version(version_dir, out_dir, merge=merge, format=fmt)
    info = json.loads((out / "mmadapt" / "export.json").read_text())
    click.echo(f"exported {info['name']} {info['version']} -> {out}")
    if info.get("written"):
        click.echo(f"  {info['adapter_format']}: {', '.join(info['written'])}")
    click.echo(f"  merged: {', '.join(info['merged']) or 'nothing'}; copied to {out / 'mmadapt'}: {', '.join(info['copied']) or 'nothing'}")

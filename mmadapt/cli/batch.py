"""`mmadapt batch`: predict every input with a saved artifact, in resumable shards."""

from __future__ import annotations

import click

from mmadapt.cli.common import output_dir_option


@click.command()
@click.argument("target", metavar="RECIPE_OR_VERSION_DIR", type=click.Path(exists=True))
@click.option("--inputs", required=True, type=click.Path(exists=True), help="JSONL, one input per line, or a folder of files.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Merged results (JSONL, input order).")
@click.option("--shard-size", default=16, show_default=True, help="Inputs per resumable shard.")
@output_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def batch(target: str, inputs: str, output: str, shard_size: int, output_dir: str | None, quiet: bool) -> None:
    """Predict every input with a saved artifact (a recipe means its current version).

    Under torchrun / accelerate launch each rank predicts its shards; rank 0 writes OUTPUT in
    input order. Finished shards are kept in OUTPUT.parts/, so a rerun after a crash skips them.

    \b
    Examples:
      mmadapt batch runs/zentrix-lora/v0001 --inputs questions.txt --output answers.jsonl
      python -m torch.distributed.run --nproc_per_node 2 -m mmadapt.cli batch recipes/text/lora.yaml \\
          --inputs questions.jsonl --output answers.jsonl
    """
    from mmadapt.engine import distributed
    from mmadapt.engine.batch import run_batch

    report = run_batch(target, inputs, output, shard_size=shard_size, output_dir=output_dir, progress=not quiet)
    if distributed.is_main():
        click.echo(f"{report.inputs} results in {report.shards} shards -> {report.output}")

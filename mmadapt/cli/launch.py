"""`mmadapt launch`: run a recipe as a multi-process job (torchrun here, or an sbatch script)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mmadapt.cli.common import SET_HELP, _load
from mmadapt.errors import MmadaptError


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--nproc", type=click.IntRange(1, 1024), required=True, help="Processes per node (one per GPU).")
@click.option("--nnodes", type=click.IntRange(1, 100_000), default=1, show_default=True, help="Nodes.")
@click.option("--rdzv", default=None, metavar="HOST:PORT", help="Rendezvous on the first node (needed with --nnodes > 1).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the command (or script) without running it.")
@click.option("--slurm", is_flag=True, help="Write an sbatch script (srun + torchrun) instead of running.")
@click.option("--script", "script_path", default=None, type=click.Path(dir_okay=False), help="Where --slurm writes the script.")
@click.option("--gpus-per-node", type=click.IntRange(0, 1024), default=None, help="--slurm: GPUs per node (default: --nproc).")
@click.option("--partition", default=None, help="--slurm: the partition.")
@click.option("--time", "time_limit", default="04:00:00", show_default=True, help="--slurm: the time limit.")
def launch(
    recipe: str, nproc: int, nnodes: int, rdzv: str | None, overrides: tuple[str, ...], resume: bool, dry_run: bool,
    slurm: bool, script_path: str | None, gpus_per_node: int | None, partition: str | None, time_limit: str,
) -> None:
    """Run a recipe as a multi-process job: torchrun here, or an sbatch script for Slurm.

    \b
    Examples:
      mmadapt launch recipes/text/lora.yaml --nproc 4
      mmadapt launch recipes/text/lora.yaml --nproc 8 --nnodes 2 --rdzv node001:29500   # on each node
      mmadapt launch --slurm recipes/text/lora.yaml --nproc 8 --nnodes 4 --partition gpu
    """
    import shlex

    from mmadapt.engine import distributed

    parsed = _load(recipe, overrides)  # a bad recipe fails here, before any process starts
    args = ["run", str(Path(recipe).resolve()), *[a for o in overrides for a in ("--set", o)]] + (["--resume"] if resume else [])
    if slurm:
        rdir = Path(parsed.output_dir).resolve() / parsed.name
        path = Path(script_path) if script_path else rdir / f"{parsed.name}.sbatch"
        text = distributed.slurm_script(
            args, job_name=f"mmadapt-{parsed.name}", nproc=nproc, nnodes=nnodes, workdir=str(Path.cwd()),
            log_dir=str(rdir), gpus_per_node=nproc if gpus_per_node is None else gpus_per_node,
            partition=partition, time=time_limit,
        )
        click.echo(text)
        if not dry_run:
            from mmadapt.engine.artifact import write_text_atomic

            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, text)
                path.chmod(0o755)
            except OSError as exc:
                raise MmadaptError(f"cannot write the script: {exc.strerror}", path=path, fix="choose --script elsewhere") from None
            click.echo(f"submit with: sbatch {shlex.quote(str(path))}")
        return
    command = distributed.torchrun_command(args, nproc=nproc, nnodes=nnodes, rdzv=rdzv, rdzv_id=f"mmadapt-{parsed.name}")
    click.echo(shlex.join(command))
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)

"""`mmadapt plan`: predicted peak memory per device and step time of a recipe's training strategies,
from the model's config alone (formulas: mmadapt/govern/plan.py)."""

from __future__ import annotations

import click

from mmadapt.cli.common import SET_HELP, _load


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--gpus", type=click.IntRange(min=1, max=4096), default=1, show_default=True, help="Devices to train on.")
@click.option("--gpu-memory", default="80GiB", show_default=True, help="Memory of one device.")
@click.option("--model", "model_ref", default=None, metavar="CONFIG_OR_ID",
              help="A config.json, a model folder or id, or llama-3-8b / llama-3-70b (default: the recipe's base_model).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Tokens per training sequence (default: train.max_seq_len).")
@click.option("--cpu", is_flag=True, help="Predict this machine's CPU run (peak RSS, with the load peak) instead of GPUs.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def plan(recipe, gpus, gpu_memory, model_ref, seq_len, cpu, overrides) -> None:
    """Predict peak memory per device and step time for LoRA, QLoRA and full training of a recipe's model.

    Nothing is loaded: the prediction comes from the model's config (parameters, activations of
    seq len x hidden x layers x batch, gradients, optimizer states, quantized weights). With more than
    one GPU, DDP and FSDP are both shown.

    \b
    Examples:
      mmadapt plan recipes/text/lora.yaml
      mmadapt plan recipes/text/lora.yaml --model llama-3-70b --gpus 8 --gpu-memory 80GiB --seq-len 2048
    """
    from mmadapt.govern.plan import describe, load_shape, parse_size, predict, recipe_setups, with_alternatives
    from mmadapt.govern.report import table

    parsed = _load(recipe, overrides)
    capacity = parse_size(gpu_memory)
    shape = load_shape(model_ref or parsed.base_model)
    setups = recipe_setups(parsed, devices=1 if cpu else gpus, device="cpu" if cpu else "gpu", seq_len=seq_len)
    setups = with_alternatives(setups)  # beside what the recipe trains: the other methods and the memory knobs
    rows = []
    for setup in setups:
        p = predict(shape, setup)
        rows.append({
            "setup": describe(setup),
            "peak GiB/device": f"{p.peak_bytes / 2**30:,.1f}",
            "weights": f"{p.weights / 2**30:,.1f}",
            "grads+optim": f"{p.state / 2**30:,.1f}",
            "activations": f"{(p.activations + p.logits) / 2**30:,.1f}",
            "step s": "-" if cpu else f"{p.step_seconds:.2g}",
            "fits": "yes" if cpu or p.peak_bytes <= capacity else "no",
        })
    where = "this CPU" if cpu else f"{gpus} x {gpu_memory}"
    click.echo(f"{shape.params / 1e9:.2f} B parameters; sequences of {setups[0].seq_len:g} tokens, batch {setups[0].batch}; {where}")
    click.echo(table(rows, list(rows[0])))

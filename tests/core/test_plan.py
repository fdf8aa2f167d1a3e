"""`mmadapt plan`: parameter counts from a config equal the real model's, LoRA counts equal peft's, the
formulas respond to each knob as they should, and the command prints what fits (one line on bad input)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.govern.plan import KNOWN, Setup, Shape, load_shape, predict


def test_parameter_and_lora_counts_match_transformers_and_peft(tiny_lm):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = load_shape(str(tiny_lm))
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert shape.params == sum(p.numel() for p in model.parameters())
    untied = Shape.from_config({**json.loads((tiny_lm / "config.json").read_text()), "tie_word_embeddings": False})
    assert untied.params == shape.params + shape.vocab * shape.hidden
    for dora in (False, True):
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm), LoraConfig(r=4, target_modules="all-linear", use_dora=dora))
        assert shape.lora_params(4, dora) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_llama_3_configs_give_the_published_sizes():
    assert load_shape("llama-3-8b").params == 8_030_261_248
    assert load_shape("llama-3-70b").params == 70_553_706_496
    assert set(KNOWN) == {"llama-3-8b", "llama-3-70b"}


def test_each_knob_moves_the_prediction_the_right_way():
    shape = load_shape("llama-3-8b")
    lora = Setup(method="lora", dtype="fp32", seq_len=2048, batch=8, micro_batch=8)
    peak = lambda s: predict(shape, s).peak_bytes  # noqa: E731
    assert peak(replace(lora, dtype="bf16")) < 0.6 * peak(lora)
    assert peak(replace(lora, checkpointing=True)) < 0.5 * peak(lora)
    assert peak(replace(lora, method="qlora-4bit")) < peak(replace(lora, method="qlora-8bit")) < peak(lora)
    # full: the gradients beside the activations (which also keep the norms' normalised inputs), or the
    # gradients and the two AdamW moments after them, whichever is more
    full = predict(shape, replace(lora, method="full"))
    assert full.activations == predict(shape, lora).activations + 2 * shape.hidden * 4 * shape.layers * 8 * 2048
    assert full.gradients == 4 * shape.params and full.state == 12 * shape.params
    expected = full.runtime + full.weights + max(full.activations + full.logits + full.gradients, full.state)
    assert peak(replace(lora, method="full")) == pytest.approx(expected, rel=1e-9)
    full8 = replace(lora, method="full", devices=8)
    held = lambda s: predict(shape, s).weights + predict(shape, s).state  # noqa: E731
    assert held(replace(full8, parallel="fsdp")) < held(replace(full8, parallel="ddp")) / 6  # sharded by 8, one block gathered
    assert predict(shape, replace(full8, parallel="fsdp")).activations == predict(shape, replace(full8, parallel="ddp")).activations
    assert predict(shape, replace(lora, checkpointing=True)).step_seconds > predict(shape, lora).step_seconds
    # full fine-tuning under a bf16 base trains mixed precision (text/full.py): fp32 masters + their bf16
    # autocast copies + fp32 gradient + two fp32 AdamW moments = 4 + 2 + 4 + 8 bytes a parameter
    state = predict(shape, replace(lora, method="full", dtype="bf16"))
    assert state.weights + state.state == pytest.approx(18 * shape.params)


def test_plan_command_prints_what_fits_and_refuses_a_bad_size(make_recipe, write_recipe, tiny_lm):
    recipe = write_recipe(make_recipe(base_model=str(tiny_lm), strategies={"adapter": {"r": 8}}))
    out = CliRunner().invoke(main, ["plan", str(recipe), "--model", "llama-3-70b", "--gpus", "8", "--gpu-memory", "80GiB", "--seq-len", "2048"])
    assert out.exit_code == 0, out.output
    assert "70.55 B parameters" in out.output and "full, fp32, fsdp x8" in out.output and "qlora-4bit" in out.output
    assert " yes" in out.output and " no" in out.output
    bad = CliRunner().invoke(main, ["plan", str(recipe), "--gpu-memory", "lots"])
    assert bad.exit_code == 2 and "--gpu-memory 'lots' is not a size" in bad.output


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_weights_are_what_bitsandbytes_holds_and_the_file_is_unmapped(tiny_lm, bits):
    """plan's QLoRA weights equal the bytes of the tensors a bitsandbytes load leaves in the model (int8 +
    SCB scales, or packed NF4 + its quantisation state; the rest fp32), and no weight still views the file."""
    pytest.importorskip("bitsandbytes")
    from mmadapt.modalities.text.model import load_causal_lm

    model, _, _ = load_causal_lm(str(tiny_lm), quantize=bits)
    storages: dict[int, int] = {}

    def count(tensor):
        if tensor is not None:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    for tensor in [*model.parameters(), *model.buffers()]:
        count(tensor)
    for module in model.modules():
        weight = module.weight if hasattr(module, "weight") else None
        if bits == "8bit" and weight is not None and type(weight).__name__ == "Int8Params":
            count(weight.SCB)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            for tensor in (state.absmax, state.code, state.state2.absmax, state.state2.code):
                count(tensor)
    shape = load_shape(str(tiny_lm))
    buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
    predicted = predict(shape, Setup(method=f"qlora-{bits}", device="cpu")).weights
    assert sum(storages.values()) - buffers == pytest.approx(predicted, rel=0.02)
    with open("/proc/self/maps", encoding="utf-8") as maps:
        mapped = [line.split()[0].split("-") for line in maps if line.rstrip().endswith(".safetensors")]
    inside = [t for t in model.parameters() if any(int(a, 16) <= t.data_ptr() < int(b, 16) for a, b in mapped)]
    assert not inside, "weights still view the mapped safetensors file"


def test_cpu_adamw_step_holds_one_more_copy_of_the_trainable_weights():
    """The trainer's foreach AdamW on CPU makes sqrt(v) of every trainable tensor at once: plan's state on a
    CPU is 20 bytes a LoRA weight (16 on a GPU, fused) and 4·P·b for full."""
    import torch

    from mmadapt.engine.cpu_memory import return_freed_memory_to_os
    from mmadapt.engine.meters import PeakMemory
    from mmadapt.engine.trainer import make_optimizer

    return_freed_memory_to_os()
    params = [torch.nn.Parameter(torch.zeros(2**23)) for _ in range(4)]  # 4 x 32 MiB
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer = make_optimizer(params, 1e-3, 0.0)
    optimizer.step()  # the moments are made here
    with PeakMemory() as meter:
        start = meter._proc.memory_info().rss / 2**20
        optimizer.step()
    assert 0.8 * 128 < meter.peak_mib - start < 1.3 * 128
    shape = load_shape("llama-3-8b")
    cpu, gpu = (predict(shape, Setup(method="full", device=d)) for d in ("cpu", "gpu"))
    assert cpu.state == pytest.approx(gpu.state * 4 / 3)
    assert predict(shape, Setup(device="cpu")).state == pytest.approx(predict(shape, Setup()).state * 20 / 16)


def test_plan_prices_the_loss_chunk_training_uses():
    from mmadapt.govern.plan import LOSS_CHUNK_ROWS
    from mmadapt.modalities.text.tuning import LOSS_CHUNK

    assert LOSS_CHUNK_ROWS == LOSS_CHUNK

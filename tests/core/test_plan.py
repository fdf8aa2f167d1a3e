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
    # bf16 full fine-tuning: 2 bytes weights + 2 grads + 4 moments = 8 bytes a parameter before activations
    state = predict(shape, replace(lora, method="full", dtype="bf16"))
    assert state.weights + state.state == pytest.approx(8 * shape.params)


def test_plan_command_prints_what_fits_and_refuses_a_bad_size(make_recipe, write_recipe, tiny_lm):
    recipe = write_recipe(make_recipe(base_model=str(tiny_lm), strategies={"adapter": {"r": 8}}))
    out = CliRunner().invoke(main, ["plan", str(recipe), "--model", "llama-3-70b", "--gpus", "8", "--gpu-memory", "80GiB", "--seq-len", "2048"])
    assert out.exit_code == 0, out.output
    assert "70.55 B parameters" in out.output and "full, fp32, fsdp x8" in out.output and "qlora-4bit" in out.output
    assert " yes" in out.output and " no" in out.output
    bad = CliRunner().invoke(main, ["plan", str(recipe), "--gpu-memory", "lots"])
    assert bad.exit_code == 2 and "--gpu-memory 'lots' is not a size" in bad.output

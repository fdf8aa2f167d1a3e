"""The memory and speed knobs of text training: packing (same loss, no cross-example attention),
model.dtype, gradient checkpointing, DoRA / rsLoRA, QLoRA's backend check — on the tiny Llama."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mmadapt
from mmadapt.errors import RecipeError
from mmadapt.modalities.text.tuning import IGNORE, check_packing, make_collate, summed_lm_loss

CPU = torch.device("cpu")
# three answer-masked examples of different lengths (token ids inside the tiny vocabulary)
ENCODED = [
    ([5, 6, 7, 8, 9, 10], [IGNORE, IGNORE, IGNORE, 8, 9, 10]),
    ([11, 12, 13], [IGNORE, 12, 13]),
    ([20, 21, 22, 23, 24, 25, 26], [IGNORE] * 4 + [24, 25, 26]),
]


@pytest.fixture(scope="module")
def lm(talkative_lm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(talkative_lm).eval()


def test_packing_gives_each_example_its_unpacked_loss(lm):
    packed_collate = make_collate(ENCODED, 0, CPU, packing=True)
    padded_collate = make_collate(ENCODED, 0, CPU)
    with torch.no_grad():
        alone = [float(summed_lm_loss(lm, padded_collate([i])[0])) for i in range(3)]
        batch, count = packed_collate([0, 1, 2])
        packed = float(summed_lm_loss(lm, batch))
        padded = float(summed_lm_loss(lm, padded_collate([0, 1, 2])[0]))
    assert batch["input_ids"].shape == (1, 16) and "attention_mask" not in batch  # one row, no padding
    assert batch["position_ids"][0].tolist() == [*range(6), *range(3), *range(7)]
    assert count == padded_collate([0, 1, 2])[1] == 8
    assert packed == pytest.approx(sum(alone), rel=1e-5)
    assert padded == pytest.approx(sum(alone), rel=1e-5)


def test_packed_examples_do_not_attend_to_each_other(lm):
    """Change every token of the first example: the second's logits do not move."""
    collate = make_collate(ENCODED, 0, CPU, packing=True)
    changed = [([30, 31, 32, 33, 34, 35], ENCODED[0][1]), *ENCODED[1:]]
    with torch.no_grad():
        a, b = (lm(input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False).logits[0] for x in
                (collate([0, 1])[0], make_collate(changed, 0, CPU, packing=True)([0, 1])[0]))
    assert not torch.allclose(a[:6], b[:6])  # the first example did change
    torch.testing.assert_close(a[6:], b[6:], atol=1e-6, rtol=0)
    check_packing(lm, None)  # the guard the trainer runs agrees


def test_packing_is_refused_with_prompt_tuning(talkative_lm):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(talkative_lm), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    with pytest.raises(RecipeError, match="prompt tuning"):
        check_packing(model, "r.yaml")


def _run(make_recipe, write_recipe, lm_path, tmp_path, adapter, **top):
    raw = make_recipe(
        base_model=str(lm_path),
        output_dir=str(tmp_path / "runs"),
        strategies={"adapter": adapter},
        train={"steps": 3, "batch_size": 2, "warmup_steps": 0, "lr": 1e-2, **top.pop("train", {})},
        eval={"metrics": ["token_f1"], "bootstrap": 10, "latency_samples": 0, "limit": 1},
        inference={"max_new_tokens": 2, "batch_size": 2},
        **top,
    )
    return mmadapt.run(mmadapt.load_recipe(write_recipe(raw)), progress=False)


def test_bf16_base_dora_checkpointing_and_packing_train(make_recipe, write_recipe, talkative_lm, tmp_path):
    adapter = {"r": 4, "use_dora": True}
    result = _run(make_recipe, write_recipe, talkative_lm, tmp_path, adapter, model={"dtype": "bf16"},
                  train={"gradient_checkpointing": True, "packing": True})
    assert 0 < result.manifest["parts"]["adapter"]["final_loss"] < 100
    assert result.manifest["recipe"]["model"] == {"dtype": "bf16"}
    loaded = mmadapt.load_artifact(result.version_dir)
    base = loaded.stack.model.get_base_model()
    assert base.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16  # the frozen base
    lora = base.model.layers[0].mlp.up_proj
    assert lora.lora_A["default"].weight.dtype == torch.float32 and "default" in lora.lora_magnitude_vector  # DoRA, fp32


def test_rslora_trains_and_fp32_recipe_hash_is_unchanged_by_the_new_keys(make_recipe, write_recipe, talkative_lm, tmp_path):
    result = _run(make_recipe, write_recipe, talkative_lm, tmp_path, {"r": 4, "use_rslora": True})
    assert 0 < result.manifest["parts"]["adapter"]["final_loss"] < 100
    resolved = result.manifest["recipe"]
    assert "model" not in resolved and "packing" not in resolved["train"] and "gradient_checkpointing" not in resolved["train"]


def test_gradient_checkpointing_gives_the_same_gradients(talkative_lm):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mmadapt.engine.trainer import enable_gradient_checkpointing

    grads, kept = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(talkative_lm), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert model.get_base_model().model.gradient_checkpointing
        model.train()
        layers = model.get_base_model().model.layers
        calls = []  # MLP entries; a pre-hook, as checkpointing's recompute stops once it has what backward needs
        for layer in layers:
            layer.mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t):
            loss = summed_lm_loss(model, make_collate(ENCODED, 0, CPU)([0, 1, 2])[0])
        forward_calls = len(calls)
        loss.backward()
        # the blocks' MLPs run again in the backward pass only with checkpointing (their activations were not kept)
        assert forward_calls == len(layers) and len(calls) == len(layers) * (2 if checkpointing else 1)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
        kept.append(sum(saved))
    assert kept[1] < kept[0] / 2  # what autograd keeps through the forward pass falls with checkpointing
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bf16_base_trains_its_fp32_lora_under_autocast_without_fp32_input_copies(talkative_lm, monkeypatch):
    """A bf16 base: the loss the trainer uses runs the LoRA layers in bf16 on the base's own activations
    (peft's upcast copies gone), gives the fp32 loss to bf16 accuracy, and fp32 adapter gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mmadapt.engine.trainer import enable_gradient_checkpointing
    from mmadapt.modalities.text import tuning
    from mmadapt.modalities.text.tuning import adapter_autocast_loss

    # The autocast loss installs its own saved-tensor hooks (tuning.saved_float32_narrowed), which
    # shadow any outer hooks: record what they really keep by wrapping their pack step.
    real_narrowed = tuning.saved_float32_narrowed
    recorder = {"saved": []}

    def observed(dtype, *args, **kwargs):
        hooks = real_narrowed(dtype, *args, **kwargs)

        def pack(tensor):
            packed = hooks.pack_hook(tensor)
            recorder["saved"].append(packed[0] if isinstance(packed, tuple) else packed)
            return packed

        return torch.autograd.graph.saved_tensors_hooks(pack, hooks.unpack_hook)

    monkeypatch.setattr(tuning, "saved_float32_narrowed", observed)

    batch = make_collate(ENCODED, 0, CPU)([0, 1, 2])[0]
    results = {}
    grads_of = {}
    for dtype, case in (("fp32", "plain"), ("bf16", "plain"), ("bf16", "autocast"), ("bf16", "autocast+checkpointing")):
        how = case.split("+")[0]
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(talkative_lm, dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]))
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()
        if case.endswith("checkpointing"):  # the recompute runs outside the loss function (and its peft setting)
            enable_gradient_checkpointing(model)
        loss_fn = adapter_autocast_loss(model, dtype) if how == "autocast" else summed_lm_loss
        saved = recorder["saved"] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            loss = loss_fn(model, batch)
        assert saved, "no saved tensors were recorded"
        loss.backward()
        kept = {t.untyped_storage().data_ptr(): t for t in saved if isinstance(t, torch.Tensor)}.values()
        fp32_bytes = sum(t.untyped_storage().nbytes() for t in kept if t.dtype == torch.float32)
        all_bytes = sum(t.untyped_storage().nbytes() for t in kept)
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        grads_of.setdefault(how, []).append(torch.cat([g.flatten() for g in grads]))
        results[(dtype, case)] = (float(loss), fp32_bytes, all_bytes)
    torch.testing.assert_close(grads_of["autocast"][0], grads_of["autocast"][1], atol=1e-3, rtol=2e-2)
    assert adapter_autocast_loss(model, "fp32") is summed_lm_loss
    assert results[("bf16", "autocast")][0] == pytest.approx(results[("fp32", "plain")][0], rel=2e-2)
    # peft's fp32 copies of each LoRA input are what the plain bf16 path keeps beyond the norms' fp32 inputs
    assert results[("bf16", "autocast")][1] < results[("bf16", "plain")][1] / 2
    # and they are gone, not merely narrowed: with peft's casting left on, the narrowing hooks keep them as
    # bf16 copies and the autocast run keeps 0.83x the plain run's bytes on this model (0.77x without)
    assert results[("bf16", "autocast")][2] < 0.8 * results[("bf16", "plain")][2]


def test_quantize_without_bitsandbytes_is_one_line_and_exit_2(make_recipe, write_recipe, tiny_lm, tmp_path):
    """Without the backend the run stops before the model loads, with one line that says what to install."""
    raw = make_recipe(base_model=str(tiny_lm), output_dir=str(tmp_path / "runs"), strategies={"adapter": {"quantize": "4bit"}})
    path = write_recipe(raw)
    blocker = tmp_path / "no_bnb"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['bitsandbytes'] = None\n")  # import fails
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "mmadapt.cli", "run", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "bitsandbytes" in lines[0] and "adapter.quantize" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_quantize_is_lora_only(make_recipe, write_recipe, tiny_lm):
    raw = make_recipe(base_model=str(tiny_lm), strategies={"adapter": {"method": "prompt_tuning", "quantize": "8bit"}})
    with pytest.raises(RecipeError, match="apply to method: lora"):
        mmadapt.load_recipe(write_recipe(raw))


def test_bf16_full_fine_tuning_keeps_fp32_master_weights(make_recipe, write_recipe, talkative_lm, tmp_path):
    """Full fine-tuning under model.dtype bf16 trains fp32 master weights under autocast (AdamW on bf16
    weights rounds away updates below half a bf16 step: at this lr nearly all of them), saves them in
    fp32 and runs the composed model in bf16."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    raw = make_recipe(
        base_model=str(talkative_lm),
        output_dir=str(tmp_path / "runs"),
        strategies={"full": {}},
        train={"steps": 2, "batch_size": 2, "warmup_steps": 0, "lr": 1e-5},
        eval={"metrics": ["token_f1"], "bootstrap": 10, "latency_samples": 0, "limit": 1},
        inference={"max_new_tokens": 2, "batch_size": 2},
        model={"dtype": "bf16"},
    )
    result = mmadapt.run(mmadapt.load_recipe(write_recipe(raw)), progress=False)
    saved = load_file(result.version_dir / "full" / "model" / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(talkative_lm, dtype=torch.bfloat16).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert saved[name].dtype == torch.float32
    start = base[name].float()  # what training started from: the bf16 base
    assert (saved[name] != start).float().mean() > 0.9  # lr 1e-5 moved the fp32 weights...
    assert (saved[name].to(torch.bfloat16).float() != start).float().mean() < 0.2  # ...by less than bf16 resolves
    loaded = mmadapt.load_artifact(result.version_dir)
    assert loaded.stack.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_padded_loss_runs_the_lm_head_as_one_matmul(talkative_lm):
    """The padded loss keeps the logits from the first answer on as an index, not a count: a count's strided slice of
    hidden states that require grad made matmul expand the LM head's weight to every row (a bmm, a copy of the weight per
    row). Same loss as cross-entropy over all the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(talkative_lm)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()
    batch = make_collate(ENCODED, 0, CPU)([0, 2])[0]  # both prompts are longer than one token: a strict subset kept
    with torch.profiler.profile() as profile:
        loss = summed_lm_loss(model, batch)
        loss.backward()
    assert "aten::bmm" not in {event.key for event in profile.key_averages()}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    torch.testing.assert_close(loss.detach(), full)

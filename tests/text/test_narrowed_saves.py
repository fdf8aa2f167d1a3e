"""tuning.saved_float32_narrowed: under a bf16 base, the float32 activations autograd keeps that bf16
holds exactly (the RMSNorm upcasts) are kept as bf16 — the same gradients bit for bit, fewer bytes."""

from __future__ import annotations

import torch

from mmadapt.modalities.text.tuning import IGNORE, adapter_autocast_loss, make_collate, saved_float32_narrowed, summed_lm_loss

ENCODED = [([5, 6, 7, 8, 9, 10] * 12, [IGNORE] * 66 + [8, 9, 10, 5, 6, 7]), ([11, 12, 13] * 20, [IGNORE] * 57 + [11, 12, 13])]


def test_pack_narrows_casts_up_from_bf16_once_and_keeps_the_rest():
    hooks = saved_float32_narrowed(torch.bfloat16, min_numel=4)
    source = torch.randn(64, dtype=torch.bfloat16, requires_grad=True)
    for upcast in (source.to(torch.float32), (source * 2).float()):  # from a leaf, from an op
        packed = hooks.pack_hook(upcast)
        assert isinstance(packed, tuple) and packed[0].dtype == torch.bfloat16
        assert hooks.pack_hook(upcast) is packed  # saved by two ops (pow, mul): one bf16 copy
        assert torch.equal(hooks.unpack_hook(packed), upcast)
    inexact = torch.randn(64, requires_grad=True) / 3
    assert hooks.pack_hook(inexact) is inexact  # computed in float32: kept as float32
    same_values = source.detach().float().requires_grad_() * 1  # bf16 would hold these, but nothing says so
    assert hooks.pack_hook(same_values) is same_values
    from_half = torch.randn(64, dtype=torch.float16, requires_grad=True).float()  # bf16 does not hold every fp16
    assert hooks.pack_hook(from_half) is from_half
    untracked = torch.randn(64).to(torch.bfloat16).to(torch.float32)  # no autograd record
    assert hooks.pack_hook(untracked) is untracked
    parameter = torch.nn.Parameter(untracked.clone())
    assert hooks.pack_hook(parameter) is parameter


def test_bf16_lora_gradients_are_bitwise_the_same_and_float32_kept_falls(talkative_lm):
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(talkative_lm, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()
    batch = make_collate(ENCODED, 0, torch.device("cpu"))([0, 1])[0]

    def grads(loss_fn):
        model.zero_grad()
        loss_fn(model, batch).backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    def kept_float32_bytes(hooks) -> int:
        kept = {}

        def record(tensor):
            packed = hooks.pack_hook(tensor) if hooks else tensor
            stored = packed[0] if isinstance(packed, tuple) else packed
            if stored.dtype == torch.float32 and not isinstance(stored, torch.nn.Parameter):
                kept[stored.untyped_storage().data_ptr()] = stored.untyped_storage().nbytes()
            return packed

        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            disable_input_dtype_casting(model),
            torch.autograd.graph.saved_tensors_hooks(record, hooks.unpack_hook if hooks else (lambda t: t)),
        ):
            summed_lm_loss(model, batch)
        return sum(kept.values())

    def without_narrowing(net, b):  # adapter_autocast_loss as it was: autocast, peft's casting off
        with torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(net):
            return summed_lm_loss(net, b)

    narrowed, plain = grads(adapter_autocast_loss(model, "bf16")), grads(without_narrowing)
    assert all(torch.equal(a, b) for a, b in zip(narrowed, plain, strict=True))
    before, after = kept_float32_bytes(None), kept_float32_bytes(saved_float32_narrowed(torch.bfloat16, min_numel=1))
    assert after < before / 2  # the norms' float32 upcasts were most of it (the rest: log-softmax of the logits)

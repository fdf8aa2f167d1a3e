"""The text loss computes logits only where they carry loss and the fp32 cross-entropy in chunks
(modalities/text/tuning.py: head_rows, chunked_cross_entropy): the loss and every gradient equal
those of the whole logits' cross-entropy — Llama, Qwen2 and Gemma3 (whose logits are soft-capped
after the head), a LoRA and a prompt-tuned model, fp32 and bf16 — and autograd keeps no fp32 copy
of the logits."""

from __future__ import annotations

import pytest
import torch

from mmadapt.modalities.text.tuning import IGNORE, chunked_cross_entropy, make_collate, summed_lm_loss
from tests.text.test_varlen import ENCODED, _config, _lora_grads

CPU = torch.device("cpu")


def _model(kind: str, dtype=torch.float32, prompt_tuning: bool = False):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _config(kind)
    config.vocab_size = 97  # unlike any other width of the tiny model (its MLP is 64 wide)
    if kind == "gemma3":
        config.final_logit_softcapping = 3.0  # elementwise, after the head: must see only the kept rows
    base = AutoModelForCausalLM.from_config(config).to(dtype)
    peft_config = (
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
        if prompt_tuning
        else LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    model = get_peft_model(base, peft_config).train()
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 trainable weights, as mmadapt trains them
    return model


def _whole_logits_loss(model, batch) -> torch.Tensor:
    """The loss as it was computed before: every position's logits, shifted, one fp32 cross-entropy."""
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -labels.shape[1] :]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


@pytest.mark.parametrize(
    "kind,dtype,prompt_tuning",
    [
        ("llama", torch.float32, False),
        ("qwen2", torch.float32, False),
        ("gemma3", torch.float32, False),
        ("llama", torch.bfloat16, False),
        ("llama", torch.float32, True),
    ],
)
def test_loss_and_gradients_equal_the_whole_logits_loss(kind, dtype, prompt_tuning, monkeypatch):
    from mmadapt.modalities.text import tuning

    monkeypatch.setattr(tuning, "LOSS_CHUNK", 4)  # several chunks for the 17 answer tokens
    model = _model(kind, dtype, prompt_tuning)
    batch, count = make_collate(ENCODED, 0, CPU)([0, 1, 2, 3])
    expected = _whole_logits_loss(model, batch)
    expected.backward()
    want = _lora_grads(model)
    model.zero_grad()
    loss = summed_lm_loss(model, batch)
    loss.backward()
    got = _lora_grads(model)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(loss, expected, **tol)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tol, msg=name)


def test_only_answer_rows_reach_the_head_and_no_fp32_logits_are_kept():
    model = _model("llama", torch.bfloat16)
    vocab = model.config.vocab_size
    batch, count = make_collate(ENCODED, 0, CPU)([0, 1, 2, 3])
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    kept = []

    def pack(tensor):
        if tensor.dtype == torch.float32 and tensor.dim() == 2 and tensor.shape[-1] == vocab:
            kept.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        summed_lm_loss(model, batch).backward()
    assert seen == [(count, model.config.hidden_size)]  # the 17 positions before an answer token, not 4 x 7
    assert kept == []  # the fp32 upcast and log-softmax are recomputed, chunk by chunk, in the backward pass
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _whole_logits_loss(model, batch).backward()
    assert kept  # what the whole-logits loss keeps (so the hook above can see it)


def test_chunked_cross_entropy_matches_one_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(10, 7, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 7, (10,))
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    (want,) = torch.autograd.grad(expected, logits)
    loss = chunked_cross_entropy(logits, targets, chunk=3)
    (got,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(got, want)
    empty = chunked_cross_entropy(logits[:0], targets[:0])
    assert float(empty) == 0.0 and empty.requires_grad

"""Varlen attention for packed rows: a packed row's logits and LoRA gradients equal those of its examples run one
by one on the model's own (sdpa) attention — Llama, Qwen2 with grouped-query heads, and Gemma3 whose local layers'
window is shorter than one of the examples. Tiny models built in-process from the real config classes."""

from __future__ import annotations

import pytest
import torch

from mmadapt.modalities.text import varlen
from mmadapt.modalities.text.tuning import IGNORE, check_packing, make_collate, summed_lm_loss

CPU = torch.device("cpu")
WINDOW = 4
# four answer-masked examples; two share a length (stacked into one SDPA call), two are longer than WINDOW
ENCODED = [
    ([5, 6, 7, 8, 9, 10, 11], [IGNORE, IGNORE, 7, 8, 9, 10, 11]),
    ([12, 13, 14], [IGNORE, 13, 14]),
    ([20, 21, 22, 23, 24, 25, 26, 27, 28], [IGNORE] * 3 + [23, 24, 25, 26, 27, 28]),
    ([30, 31, 32], [IGNORE, 31, 32]),
]


def _config(kind: str, window: int = WINDOW):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    if kind == "llama":
        return LlamaConfig(num_key_value_heads=4, **common)
    if kind == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **common)
    return Gemma3TextConfig(
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=window,
        query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"],
        **common,
    )


def _lora_model(kind: str, window: int = WINDOW):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config(kind, window))
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).train()


def _lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def _per_example_logits(model, encoded):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([x]), use_cache=False).logits[0] for x, _ in encoded]


@pytest.mark.parametrize(("kind", "checkpointing"), [("llama", False), ("qwen2", False), ("gemma3", False), ("gemma3", True)])
def test_packed_row_equals_its_examples_one_by_one(kind, checkpointing):
    """With checkpointing the backward pass recomputes each layer: on the same varlen attention."""
    model = _lora_model(kind)
    if checkpointing:
        from mmadapt.engine.trainer import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    padded = make_collate(ENCODED, 0, CPU)
    alone_logits = _per_example_logits(model, ENCODED)
    alone_loss = sum(summed_lm_loss(model, padded([i])[0]) for i in range(len(ENCODED)))
    alone_loss.backward()
    alone_grads = _lora_grads(model)

    batch, count = make_collate(ENCODED, 0, CPU, packing=True)(list(range(len(ENCODED))))
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 10, 19, 22] and count == 15
    with varlen.packed_attention(model):
        assert model.get_base_model().config._attn_implementation == varlen.NAME
        with torch.no_grad():
            bounds = {k: batch[k] for k in varlen.PACKED_KEYS}
            packed_logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **bounds
            ).logits[0]
        packed_loss = summed_lm_loss(model, batch)
        packed_loss.backward()
    assert model.get_base_model().config._attn_implementation == "sdpa"  # restored
    packed_grads = _lora_grads(model)

    torch.testing.assert_close(packed_logits, torch.cat(alone_logits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) > 0
    for name, grad in alone_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    check_packing(model, None)


def test_gemma3_window_is_shorter_than_the_long_examples():
    """The window matters in the test above: the long examples' logits move with it."""
    narrow, wide = _lora_model("gemma3"), _lora_model("gemma3", window=64)
    a, b = _per_example_logits(narrow, ENCODED[2:3]), _per_example_logits(wide, ENCODED[2:3])
    assert not torch.allclose(a[0][WINDOW:], b[0][WINDOW:], atol=1e-4)
    torch.testing.assert_close(a[0][:WINDOW], b[0][:WINDOW])  # same weights: equal where the window does not bite


def test_without_boundaries_it_is_sdpa_and_a_padded_batch_is_unchanged():
    """Generation during training (eval_every) runs on the switched model: a padded batch gives sdpa's logits."""
    model = _lora_model("qwen2").eval()
    batch, _ = make_collate(ENCODED, 0, CPU)([0, 1, 2])
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with varlen.packed_attention(model):
            during = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(during[mask], before[mask])


def _left_padded(encoded, pad_id=0):
    width = max(len(x) for x, _ in encoded)
    ids = torch.tensor([[pad_id] * (width - len(x)) + x for x, _ in encoded])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x, _ in encoded])
    return ids, mask


@pytest.fixture
def sdpa_mask_calls(monkeypatch):
    """Counts transformers' sdpa_mask calls (the real function runs)."""
    from transformers import masking_utils

    calls, real = [], masking_utils.sdpa_mask

    def counted(*args, **kwargs):
        calls.append(kwargs.get("q_length"))
        return real(*args, **kwargs)

    monkeypatch.setattr(masking_utils, "sdpa_mask", counted)
    return calls


def test_a_packed_forward_builds_no_mask_and_a_padded_one_does(sdpa_mask_calls):
    """The rows x rows block-diagonal mask transformers would build for a packed row is never read by the varlen
    attention: none is built; a padded call on the switched model still gets sdpa's mask."""
    model = _lora_model("gemma3")
    batch, _ = make_collate(ENCODED, 0, CPU, packing=True)(list(range(len(ENCODED))))
    ids, mask = _left_padded(ENCODED)
    with varlen.packed_attention(model):
        summed_lm_loss(model, batch).backward()
        assert sdpa_mask_calls == []
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        assert len(sdpa_mask_calls) > 0
    assert varlen._packed_call == [False]


@pytest.mark.parametrize("kind", ["qwen2", "gemma3"])
def test_a_left_padded_batch_on_varlen_keeps_its_padding_mask(kind):
    """Left padding (generation at eval_every): the real tokens would see the pads if the mask were dropped
    (checked: logits without it differ), so equal logits mean the varlen model kept sdpa's padding mask; Gemma3's
    9-token example is also longer than its local layers' window."""
    model = _lora_model(kind).eval()
    ids, mask = _left_padded(ENCODED)
    real = mask.bool()
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits
        maskless = model(input_ids=ids, attention_mask=torch.ones_like(mask)).logits
        with varlen.packed_attention(model):
            switched = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(maskless[real], own[real], atol=1e-3)
    torch.testing.assert_close(switched[real], own[real])

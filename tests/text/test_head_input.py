"""The LM head gets a densely laid out input (modalities/text/model.dense_head_input).

transformers slices the hidden states before the head (``logits_to_keep``), which leaves a batch's
slice with the whole sequence's row stride; torch's CPU bf16 linear copies the head's weight once per
row for such an input (0.5 s and 229 MiB on SmolLM2 at 4 x 1024 tokens, README "Memory and speed").
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_head_sees_dense_input_and_the_same_logits(tiny_lm, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from mmadapt.modalities.text.model import dense_strides, load_causal_lm, torch_dtype

    model, _tok, _info = load_causal_lm(str(tiny_lm), dtype=dtype)
    plain = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch_dtype(dtype)).eval()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].stride()))
    plain_seen = []
    plain.get_output_embeddings().register_forward_hook(lambda _m, args, _out: plain_seen.append(args[0].stride()))
    ids = torch.randint(3, 100, (3, 9))
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=2).logits
        expected = plain(input_ids=ids, logits_to_keep=2).logits
    assert plain_seen[0] != dense_strides((3, 2, plain.config.hidden_size))  # the slice transformers hands over
    assert seen == [dense_strides((3, 2, model.config.hidden_size))]
    assert torch.equal(logits, expected)


def test_dense_input_keeps_gradients(tiny_lm):
    import torch

    from mmadapt.modalities.text.model import load_causal_lm

    model, _tok, _info = load_causal_lm(str(tiny_lm))
    ids = torch.randint(3, 100, (2, 7))
    model(input_ids=ids, logits_to_keep=3).logits.float().square().sum().backward()
    grads = [p.grad for p in model.model.layers[-1].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_dense_strides_match_torch():
    import torch

    from mmadapt.modalities.text.model import dense_strides

    for shape in [(3, 2, 5), (8, 1, 576), (1,), (4, 0, 2)]:
        assert dense_strides(shape) == torch.empty(shape).stride()

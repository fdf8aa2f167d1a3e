"""Fixtures of the text tests: the tiny LM with an untied, random output head."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def talkative_lm(tiny_lm, tmp_path_factory):
    """The tiny LM with its output head untied from the embeddings.

    With tied random weights the greedy next token is the last input token, so the tiny model
    only ever answers '\\n' (stripped to ''), and comparing predictions would prove nothing.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_lm)
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    folder = tmp_path_factory.mktemp("talkative-lm")
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(folder)
    return folder

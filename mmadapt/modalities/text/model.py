"""Loading a causal LM and its tokenizer for the text modality, and the text stack."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmadapt.errors import ModelError
from mmadapt.models.quiet import quiet_libraries
from mmadapt.models.resolve import check_safetensors_only, load_error, pickle_trusted, resolve_model
from mmadapt.protocols import Stack


def load_causal_lm(
    ref: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool | None = None,
    chat_template: str | None = None,
    fallback_chat_template: str | None = None,
):
    """(model, tokenizer, info) for a model reference; the tokenizer pads on the left for generation.

    ``chat_template`` (a Jinja string) replaces the tokenizer's own; ``fallback_chat_template`` is
    used only when it has none (a base model). Pickle weights load only when ``allow_pickle`` (None: ``$MMADAPT_TRUST_REMOTE_PICKLE``, see models/resolve.py).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve_model(ref)
    allow_pickle = pickle_trusted(allow_pickle)
    check_safetensors_only(location, allow_pickle=allow_pickle)
    try:
        with quiet_libraries():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error(ref, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if chat_template is not None or (fallback_chat_template is not None and not getattr(tokenizer, "chat_template", None)):
        tokenizer.chat_template = chat_template or fallback_chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template", path=ref, fix="use an instruct/chat model or set data.fallback_chat_template")
    model.eval()
    config_path = Path(location) / "config.json"
    info = {
        "resolved": location,
        "revision": hashlib.sha256(config_path.read_bytes()).hexdigest()[:16] if config_path.is_file() else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, tokenizer, info


class TextStack(Stack):
    """Live state of a text stack: model, tokenizer, prompt and retriever."""

    def __init__(self, recipe, model, tokenizer, base_info):
        super().__init__(recipe, base_info)
        self.model = model
        self.tokenizer = tokenizer
        self.system: str | None = None
        self.template = "{question}"
        self.few_shot: list[tuple[str, str]] = []
        self.retriever = None
        self.context_template = "Context:\n{context}\n\n{question}"
        self.shared = None  # engine.shared.SharedBase when this stack shares its base (mmadapt serve)
        self.adapter: str | None = None  # the named adapter of the shared base this stack answers with

"""Loading a causal LM and its tokenizer for the text modality, and the text stack."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmadapt.errors import ModelError, RecipeError
from mmadapt.models.narrow import narrowed
from mmadapt.models.quiet import quiet_libraries
from mmadapt.models.resolve import check_safetensors_only, load_error, pickle_trusted, resolve_model
from mmadapt.protocols import Stack

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """The torch dtype of a recipe's ``model.dtype`` (fp32 | bf16 | fp16)."""
    import torch

    return getattr(torch, DTYPES[name])


def quantize_backend_missing(kind: str) -> str | None:
    """Why ``adapter.quantize: kind`` cannot run here (None when it can).

    bitsandbytes runs on CUDA and, since 0.45 (its multi-backend release), on CPU; it is an optional
    dependency (``pip install mmadapt[quantize]``).
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return f"adapter.quantize: {kind} needs bitsandbytes (pip install 'bitsandbytes>=0.45', or mmadapt[quantize])"
    return None


def quantization_config(kind: str, dtype: str):
    """transformers' BitsAndBytesConfig for QLoRA: 4-bit NF4 with double quantisation, or 8-bit (LLM.int8)."""
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch_dtype(dtype)
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_options(recipe) -> dict:
    """The base model's load settings a text recipe asks for: ``model.dtype`` and the adapter's ``quantize``.

    A quantized base with no backend to run it is refused here, before anything loads (one line, exit 2).
    """
    section = recipe.strategies.get("adapter")
    quantize = section.quantize if section is not None and section.method == "lora" else "none"
    if quantize != "none" and (missing := quantize_backend_missing(quantize)):
        raise RecipeError(missing, path=recipe.source, fix="install it, or remove adapter.quantize")
    return {"dtype": recipe.model.dtype, "quantize": quantize}


def load_causal_lm(
    ref: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool | None = None,
    dtype: str = "fp32",
    quantize: str = "none",
    chat_template: str | None = None,
    fallback_chat_template: str | None = None,
):
    """(model, tokenizer, info) for a model reference; the tokenizer pads on the left for generation.

    ``dtype`` is the base weights' dtype (``model.dtype``); ``quantize`` (4bit | 8bit) loads the linear
    layers through bitsandbytes for QLoRA. ``chat_template`` (a Jinja string) replaces the tokenizer's
    own; ``fallback_chat_template`` is used only when it has none (a base model). Pickle weights load
    only when ``allow_pickle`` (None: ``$MMADAPT_TRUST_REMOTE_PICKLE``, see models/resolve.py).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve_model(ref)
    extra = {"quantization_config": quantization_config(quantize, dtype)} if quantize != "none" else {}
    allow_pickle = pickle_trusted(allow_pickle)
    check_safetensors_only(location, allow_pickle=allow_pickle)
    try:
        with quiet_libraries():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                narrowed(location, dtype) if quantize == "none" else location,  # a converted fp32 folder: its 16-bit copy
                dtype=torch_dtype(dtype),
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                **extra,
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
    if quantize != "none":
        release_weights_file(model)
    dense_head_input(model)
    model.eval()
    config_path = Path(location) / "config.json"
    info = {
        "resolved": location,
        "revision": hashlib.sha256(config_path.read_bytes()).hexdigest()[:16] if config_path.is_file() else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, tokenizer, info


def dense_head_input(model) -> None:
    """Hand the LM head a densely laid out input: a copy where the hidden states reach it strided.

    transformers slices the last hidden states before the head (``logits_to_keep``: the last position
    in ``generate``'s prefill; mmadapt's training loss selects its rows itself, ``tuning.head_rows``),
    and a slice of a batch of several rows keeps the full sequence's row stride. On CPU, torch 2.11's bf16 linear then takes a
    slow path that copies the whole weight once per row: for SmolLM2's tied 49k x 576 head, a
    (4, 33, 576) slice of 1024-token rows took 0.50 s and a 229 MiB transient against 0.03 s and
    13 MiB for the same values laid out densely (fp32: 0.18 s against 0.13 s); a batch-of-8 prefill,
    0.89 s and 440 MiB against 0.007 s. The copy costs rows x kept positions x hidden, a few KiB to
    MiB; tensors already dense pass through. README, "Memory and speed", has the training figures.
    """
    def dense(_module, args):
        hidden = args[0]
        if hidden.stride() == dense_strides(hidden.shape):
            return None
        return (hidden.new_empty(hidden.shape).copy_(hidden), *args[1:])

    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(dense)


def dense_strides(shape) -> tuple[int, ...]:
    """The strides of a tensor of ``shape`` laid out densely, row-major (what ``torch.empty`` gives)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)  # as torch: an empty dimension does not zero the strides before it
    return tuple(reversed(strides))


def release_weights_file(model) -> int:
    """Copy a quantised model's unquantised CPU weights out of the mapped safetensors file; the bytes copied.

    transformers maps the safetensors file and, where a weight keeps the file's dtype (after a
    bitsandbytes load on CPU: the embeddings and norms), the parameter is a zero-copy view of that
    mapping. Those few views keep the whole mapping alive, and with it every page read while the linear
    layers were quantised: the process stays resident with the file's full-precision linear weights
    beside their int8/NF4 copies (SmolLM2-135M, 8-bit: the int8 model is 210 MiB of tensors, yet 405
    MiB of the file stayed resident after loading, 513 MiB once training read the tied embedding).
    Owning those tensors lets the file be unmapped.
    """
    import torch

    copied = 0
    with torch.no_grad():  # a parameter tied to another is one object: still tied after
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.is_floating_point():
                tensor.data = tensor.data.clone()
                copied += tensor.numel() * tensor.element_size()
    return copied


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")  # what configs call it


def context_window(model, tokenizer) -> int | None:
    """The model's context length in tokens (prompt and answer together): its (text) config's
    ``max_position_embeddings`` (or an older name of it), else the tokenizer's ``model_max_length``
    when that is a real bound; None when neither says (nothing is checked then)."""
    config = model.config.get_text_config()
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = tokenizer.model_max_length
    return int(limit) if isinstance(limit, int | float) and 0 < limit < 10**7 else None


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

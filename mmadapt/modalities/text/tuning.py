"""Turning train Q/A into chat token sequences with the loss on the answer only, for the shared loop.

Used by both the adapter and the full strategy (one data path, one training loop).
Inputs are built with :func:`~mmadapt.modalities.text.prompt.build_messages` from the stack as
fitted so far, so a model trained under a prompt and retrieved passages learns to use
exactly what it will be served with.

``train.packing``: a micro-batch is one row of its examples end to end (transformers'
``DataCollatorWithFlattening``): no padding, position ids restart at 0 for each example, no
attention mask, and the examples' boundaries (``cu_seq_lens_q``/``_k``, FlashAttentionKwargs) go to
the model's forward. Training runs on :mod:`~mmadapt.modalities.text.varlen` attention (each example
attended on its own, sum of l_i^2 instead of the whole row's square through a block-diagonal mask;
flash attention reads the same boundaries itself), and the model's own attention is restored after.
:func:`check_packing` proves on the model itself, before training, that no example attends to another.
"""

from __future__ import annotations

import contextlib

import torch

from mmadapt.engine import trainer
from mmadapt.errors import DataError, RecipeError
from mmadapt.modalities.text.chat import IGNORE, build_chat, encode_conversation
from mmadapt.modalities.text.model import load_options, torch_dtype
from mmadapt.modalities.text.predict import chat_texts
from mmadapt.modalities.text.retrieval import passage_text
from mmadapt.modalities.text.varlen import PACKED_KEYS, packed_attention
from mmadapt.protocols import DataBundle, FitContext, FitReport


def encode_examples(stack, data: DataBundle, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per train example; labels are IGNORE on the prompt part.

    A Q/A example is its rendered prompt then the answer and EOS (the path the shipped figures
    were measured on); a conversation goes through the chat template whole, every assistant
    turn labelled (chat.encode_conversation)."""
    examples = [e for e in data.train if e.reference]
    if not examples:
        raise DataError(
            "training needs train examples with answers", path=stack.recipe.data.train, fix="set data.train to a Q/A JSONL"
        )
    tok = stack.tokenizer
    prompts, retrieved = chat_texts(stack, [e.input for e in examples])
    end = tok.eos_token or ""
    encoded = []
    for prompt, hits, example in zip(prompts, retrieved, examples):
        if not isinstance(example.input, str):
            messages = build_chat(stack, example.input, [passage_text(h) for h in hits])
            messages.append({"role": "assistant", "content": example.reference})
            encoded.append(encode_conversation(tok, messages, max_len, where=f"train example {example.id}"))
            continue
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(example.reference + end, add_special_tokens=False)["input_ids"]
        keep = max_len - len(answer_ids)
        if keep <= 0:
            answer_ids, prompt_ids = answer_ids[:max_len], []
        elif len(prompt_ids) > keep:
            prompt_ids = prompt_ids[-keep:]  # cut the oldest context, keep the question and the answer
        encoded.append((prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
    return encoded


def make_collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device, *, packing: bool = False):
    """collate(indices) -> (batch, answer tokens): rows padded on the right, or (``packing``) one row of
    every example end to end with per-example position ids."""
    if packing:
        from transformers import DataCollatorWithFlattening

        flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE, return_flash_attn_kwargs=True)

        def collate_packed(indices: list[int]):
            batch = flatten([{"input_ids": encoded[i][0], "labels": encoded[i][1]} for i in indices])
            count = int((batch["labels"][:, 1:] != IGNORE).sum())
            return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, count

        return collate_packed

    def collate(indices: list[int]):
        width = max(len(encoded[i][0]) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            x, y = encoded[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        count = int((labels[:, 1:] != IGNORE).sum())
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}, count

    return collate


LOSS_CHUNK = 256  # logit rows per cross-entropy chunk: 256 x a 49k vocabulary is 48 MiB in fp32


def summed_lm_loss(model, batch) -> torch.Tensor:
    """Next-token cross-entropy summed over the answer tokens.

    Logits are computed only where they carry loss: the LM head over a 49k vocabulary is a large
    share of a small model's step, and its logits (with their fp32 copy and log-softmax) were the
    largest tensors of a padded chat batch. A packed row keeps exactly the positions that precede an
    answer token (``logits_to_keep``); a padded batch keeps the positions from the first answer token
    on and its LM head computes only the rows that precede an answer token (:func:`head_rows`; the
    selection also hands the head one contiguous tensor: transformers' strided ``hidden[:, -keep:]``
    made ``matmul`` run a ``bmm`` over the 49k x hidden weight expanded to every row, forward and
    backward). The cross-entropy runs in fp32 a chunk at a time (:func:`chunked_cross_entropy`).
    """
    labels = batch["labels"]
    if "position_ids" in batch:  # packed: one row, no attention mask, the boundaries (see the module docstring)
        before = (labels[0, 1:] != IGNORE).nonzero().squeeze(1)
        bounds = {k: batch[k] for k in PACKED_KEYS if k in batch}
        # use_cache=False: with a cache transformers does not read packed boundaries
        out = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=before, use_cache=False, **bounds
        )
        return chunked_cross_entropy(out.logits[0], labels[0, before + 1])
    width = labels.shape[1]
    has_label = (labels != IGNORE).any(dim=0).nonzero()
    start = max(int(has_label[0]) - 1, 0) if len(has_label) else 0
    keep = width - start
    targets = labels[:, start + 1 :]  # position start + j predicts token start + j + 1
    rows = torch.cat([targets != IGNORE, targets.new_zeros((len(labels), 1), dtype=torch.bool)], dim=1)
    answers = int(rows.sum())
    with head_rows(model, rows):  # the last `keep` positions (prompt tuning prepends virtual tokens)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    if out.logits.shape[:-1] != (answers,):
        raise RuntimeError(f"the model's LM head returned logits of shape {tuple(out.logits.shape)} for {answers} answer "
                           "positions: it reshapes its head's output, which summed_lm_loss cannot train through")
    return chunked_cross_entropy(out.logits, targets[targets != IGNORE])


@contextlib.contextmanager
def head_rows(model, rows: torch.Tensor):
    """Inside, the model's LM head is applied only to the positions ``rows`` marks (a bool mask of the
    shape of its input's leading dimensions): its input (batch, positions, hidden) becomes (n, hidden),
    and the model's logits (n, vocabulary). What the model does after its head (Gemma's logit
    soft-capping) is elementwise and applies unchanged. ``model`` may be the trainer's DDP wrapper
    (FSDP2 shards the model in place: it keeps its class)."""
    from torch.nn.parallel import DistributedDataParallel

    inner = model.module if isinstance(model, DistributedDataParallel) else model  # the trainer's DDP wrapper
    handle = inner.get_output_embeddings().register_forward_pre_hook(lambda _m, args: (args[0][rows], *args[1:]), prepend=True)
    try:
        yield
    finally:
        handle.remove()


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """Summed cross-entropy of (n, vocabulary) ``logits`` against ``targets``, in fp32.

    Computed ``chunk`` rows at a time under activation checkpointing, so the fp32 upcast of 16-bit
    logits and the log-softmax autograd would keep (two more tensors of n x vocabulary, each twice
    the size of bf16 logits) exist for one chunk at a time and are recomputed in the backward pass;
    only the logits themselves are kept (torchtune's chunked output loss and Liger's fused linear
    cross-entropy go further and never hold all logits: they need the head's weight, which mmadapt
    leaves to each model's forward). The value equals one ``cross_entropy(logits.float(), targets,
    reduction="sum")`` up to the order of the sum.
    """
    from torch.utils.checkpoint import checkpoint

    if len(targets) == 0:
        return logits.sum() * 0.0  # no answer token: a zero that still reaches the graph
    parts = [
        checkpoint(_summed_fp32_cross_entropy, logits[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        for i in range(0, len(targets), chunk)
    ]
    return torch.stack(parts).sum()


def _summed_fp32_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def adapter_autocast_loss(model, dtype: str = "fp32", quantize: str = "none", dora: bool = False):
    """The loss function for ``model``: :func:`summed_lm_loss`, or, under a 16-bit frozen base (``model.dtype``
    bf16/fp16, no quantisation) with fp32 adapter weights, the same forward under autocast to the base's
    dtype with peft's input casting off.

    Without it peft casts each LoRA layer's input up to its fp32 weights, and autograd keeps those fp32
    copies (one per adapted linear: q, k and v each copy the same input) for the backward pass: on
    SmolLM2 at 1024 tokens they were 0.6 GiB of the bf16 run's 1.5 GiB of saved activations. Under
    autocast the adapters compute in the base dtype on the base's own activations (no copy) while
    their weights, gradients and AdamW state stay fp32, as in bf16 mixed precision.

    Checkpointing recomputes a block in the backward pass, outside this function: autocast is restored
    there by torch, peft's casting is not. For LoRA that changes nothing autograd keeps (the cast input
    is cast back to the base dtype by autocast, so the same bf16 tensor is saved); DoRA's weight norm
    would differ in dtype, so with ``dora`` peft's casting stays on (autocast only).
    """
    adapters_fp32 = any(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    if dtype == "fp32" or not adapters_fp32 or quantize != "none":
        return summed_lm_loss
    from peft.helpers import disable_input_dtype_casting

    base_dtype, device_type = torch_dtype(dtype), next(model.parameters()).device.type

    def loss_in_base_dtype(net, batch) -> torch.Tensor:
        with (
            torch.autocast(device_type, dtype=base_dtype),
            disable_input_dtype_casting(net, active=not dora),
            saved_float32_narrowed(base_dtype),
        ):
            return summed_lm_loss(net, batch)

    return loss_in_base_dtype


def saved_float32_narrowed(dtype: torch.dtype, min_numel: int = 4096):
    """Saved-tensor hooks under which autograd keeps a float32 activation as ``dtype`` when that is exact.

    A 16-bit model's RMSNorm computes in float32 (``hidden.to(float32)``, then ``pow`` and ``mul``),
    and autograd keeps that float32 upcast of the 16-bit residual stream for the backward pass: one
    float32 copy of the hidden states per norm (SmolLM2 at 1024 tokens: 61 norms, 135 MiB). Such a
    tensor came from ``dtype``, so ``dtype`` holds it exactly: it is kept as ``dtype`` and upcast when
    the backward pass reads it, the same values bit for bit. What qualifies is read from autograd's record, not
    from the values (a cast down and back and a comparison per tensor per forward): a float32 tensor whose
    ``grad_fn`` is the cast (``ToCopyBackward0``) of a ``dtype`` tensor (:func:`cast_up_from`). Any other float32
    tensor (logits, statistics, one computed in float32 that ``dtype`` might happen to hold), a small one, or a
    parameter is kept as it is. Tensors saved by several ops (``pow`` and ``mul`` both save the upcast) are
    narrowed once per forward pass.
    """
    import weakref

    narrowed: dict[int, tuple] = {}

    def pack(tensor):
        if tensor.dtype != torch.float32 or tensor.numel() < min_numel or not cast_up_from(tensor, dtype):
            return tensor
        seen = narrowed.get(id(tensor))
        if seen is not None and seen[0]() is tensor:
            return seen[1]
        packed = (tensor.to(dtype),)
        narrowed[id(tensor)] = (weakref.ref(tensor), packed)
        return packed

    def unpack(packed):
        return packed[0].to(torch.float32) if isinstance(packed, tuple) else packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def cast_up_from(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether autograd records ``tensor`` as a cast (``.to``, ``.float()``, autocast's) of a ``dtype`` tensor: its node
    is ``ToCopyBackward0`` and the node it reads from produced ``dtype`` (``_input_metadata``, torch's per-node record
    of its gradient's dtype, which is its forward output's). Such a tensor holds ``dtype``'s values exactly when it is
    the wider type. A leaf (no ``grad_fn``: a parameter, a tensor outside autograd) is never one."""
    node = tensor.grad_fn
    if node is None or node.name() != "ToCopyBackward0":
        return False
    source, index = node.next_functions[0]
    return source is not None and source._input_metadata[index].dtype == dtype


def uses_dora(recipe) -> bool:
    section = recipe.strategies.get("adapter")
    return section is not None and section.method == "lora" and section.use_dora


def check_packing(model, path) -> None:
    """Refuse ``train.packing`` on a model whose attention would cross examples: the logits of a
    second example packed behind a first, run as training runs it (:func:`packed_attention`, the
    collator's boundaries), must equal its logits alone on the model's own attention."""
    peft_config = getattr(model, "active_peft_config", None)  # a peft model (text-only code: not the shared rule)
    if peft_config is not None and peft_config.is_prompt_learning:
        raise RecipeError(
            "train.packing does not work with prompt tuning (its virtual tokens are prepended to each row)",
            path=path,
            fix="set train.packing: false, or adapter.method: lora",
        )
    first, second = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11]])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = model(input_ids=second.to(device), use_cache=False).logits[0].float()
        rows = [(first[0].tolist(),) * 2, (second[0].tolist(),) * 2]
        batch, _ = make_collate(rows, 0, device, packing=True)([0, 1])
        with packed_attention(model):
            bounds = {k: batch[k] for k in PACKED_KEYS}
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **bounds)
        packed = packed.logits[0, 4:]
    model.train(was_training)
    packed = packed.float()
    tolerance = (1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2) * max(1.0, float(alone.abs().max()))
    if not torch.allclose(alone, packed, atol=tolerance, rtol=0):
        impl = model.config._attn_implementation
        raise RecipeError(
            f"train.packing: this model's attention ({impl}) lets packed examples see each other",
            path=path,
            fix="set train.packing: false (or use a transformers model whose masks follow position ids)",
        )


def train_text_model(model, stack, data: DataBundle, ctx: FitContext, name: str, overrides=None) -> FitReport:
    """Train ``model`` (peft-wrapped or the full model) on the recipe's train split."""
    config = overrides.apply(stack.recipe.train) if overrides is not None else stack.recipe.train
    encoded = encode_examples(stack, data, config.max_seq_len)
    device = next(model.parameters()).device
    if config.packing:
        check_packing(model, stack.recipe.source)
    with packed_attention(model) if config.packing else contextlib.nullcontext():
        return trainer.train_strategy(
            model,
            ctx,
            name,
            lengths=[len(x) for x, _ in encoded],
            collate=make_collate(encoded, stack.tokenizer.pad_token_id, device, packing=config.packing),
            loss_fn=adapter_autocast_loss(model, **load_options(stack.recipe), dora=uses_dora(stack.recipe)),
            config=config,
        )

"""Variable-length ("varlen") attention for packed training rows, with torch's SDPA on any device.

A packed row is several examples end to end (tuning's ``train.packing``). transformers' own sdpa
path reads the boundaries from the position ids and builds one block-diagonal causal mask over the
whole row: attention then costs (sum of lengths)^2 through SDPA's masked (slow) kernel, more than
packing saves in padding. Here each example is attended on its own, as ``flash_attn_varlen`` does:
the row's q/k/v are split at ``cu_seq_lens_q`` (the FlashAttentionKwargs that
``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` makes and transformers forwards from
the model's forward to its attention function), examples of equal length are stacked, and each
group is one causal SDPA call (sum of l_i^2), with:

* GQA as transformers' sdpa path does it (``enable_gqa`` where it would use it, else ``repeat_kv``);
* sliding-window layers (``sliding_window`` passed by the layer, e.g. Gemma3's local layers and
  Qwen2's): an example longer than the window gets transformers' band, key kept when
  ``q - window < k <= q`` (``masking_utils.sliding_window_causal_mask_function``);
* the layer's dropout and scaling as it passes them.

It is registered with ``AttentionInterface`` under :data:`NAME`, and a call without ``cu_seq_lens_q`` —
generation at ``eval_every``, an unpacked row — is transformers' sdpa attention unchanged, on the mask
transformers built. Its mask function (``AttentionMaskInterface``) is sdpa's, except on a packed call: a
transformers mask function is given only sizes, the 2D padding mask and the mask predicate, not the
boundaries, so :func:`packed_attention` marks the model's forward calls that carry ``cu_seq_lens_q``
(forward hooks) and on those no mask is built (sdpa's would be the row's rows x rows block-diagonal
mask, built every forward and never read here). Without any mask function transformers would build
no mask at all, and a padded call would lose its padding mask.
:func:`packed_attention` switches a model to it for training and restores its own implementation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

NAME = "mmadapt_varlen"
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_SWITCHED_FROM = ("sdpa", "eager")  # flash / flex attention read packed rows natively: left as they are
_last_split: list = [None, None]  # (cu_seq_lens tensor, its lengths): one host read per forward, not per layer
_packed_call = [False]  # True inside a forward that was given cu_seq_lens_q (set by packed_attention's hooks)


def _lengths(cu_seq_lens: torch.Tensor) -> list[int]:
    if _last_split[0] is not cu_seq_lens:  # the tensor is held here, so its identity cannot be reused
        _last_split[:] = [cu_seq_lens, cu_seq_lens.diff().tolist()]
    return _last_split[1]


def _stacked(parts, members: list[int]) -> torch.Tensor:
    return parts[members[0]][None] if len(members) == 1 else torch.stack([parts[i] for i in members])


def _band(length: int, window: int, device) -> torch.Tensor:
    i = torch.arange(length, device=device)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance < window)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
    """transformers' attention-function signature: q/k/v (batch, heads, tokens, head_dim) -> (batch, tokens, heads,
    head_dim), None."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward, use_gqa_in_sdpa

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, sliding_window=sliding_window, **kwargs
        )
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise ValueError(f"{NAME} attention has no logit softcap, attention sinks or position bias: set train.packing: false")
    lengths = _lengths(cu_seq_lens)
    if query.shape[0] != 1 or query.shape[2] != key.shape[2] or sum(lengths) != query.shape[2]:
        raise ValueError(f"{NAME} attention takes one packed row without a cache whose cu_seq_lens_q add up to its length")
    groups = module.num_key_value_groups if hasattr(module, "num_key_value_groups") else 1
    # squeeze/unbind, not [0]: a select's backward allocates and zero-fills its whole input for every piece
    q, k, v = (t.squeeze(0).split(lengths, dim=1) for t in (query, key, value))
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    out: list = [None] * len(lengths)
    for n, members in by_length.items():
        qs, ks, vs = (_stacked(parts, members) for parts in (q, k, v))
        band = _band(n, sliding_window, query.device) if sliding_window is not None and n > sliding_window else None
        extra = {}
        if groups > 1:
            if use_gqa_in_sdpa(band, ks, vs):
                extra["enable_gqa"] = True
            else:
                ks, vs = repeat_kv(ks, groups), repeat_kv(vs, groups)
        o = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=band, dropout_p=dropout, is_causal=band is None, scale=scaling, **extra
        )
        for i, piece in zip(members, o.unbind(0)):
            out[i] = piece
    return torch.cat(out, dim=1).transpose(0, 1).unsqueeze(0).contiguous(), None


def varlen_mask(*args, **kwargs):
    """transformers' mask-function signature: None in a packed forward (the attention reads the boundaries), else
    ``sdpa_mask``'s mask (padding, sliding window) for transformers' sdpa attention."""
    from transformers import masking_utils

    return None if _packed_call[0] else masking_utils.sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make :data:`NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)


def _mark_packed(_module, _args, kwargs) -> None:
    _packed_call[0] = kwargs.get("cu_seq_lens_q") is not None


def _unmark(*_) -> None:
    _packed_call[0] = False


def _pretrained(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


@contextmanager
def packed_attention(model):
    """``model`` (a transformers model, peft-wrapped or not) on :data:`NAME` attention inside the block, on its own
    implementation again after it (also on error), so nothing saved or served changes. A model on flash or flex
    attention, which read packed rows themselves, is left as it is."""
    base = _pretrained(model)
    before = base.config._attn_implementation
    if before not in _SWITCHED_FROM:
        yield
        return
    register()
    base.set_attn_implementation(NAME)
    hooks = (
        base.register_forward_pre_hook(_mark_packed, with_kwargs=True),
        base.register_forward_hook(_unmark, always_call=True),
    )
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        base.set_attn_implementation(before)
        _last_split[:] = [None, None]
        _packed_call[0] = False

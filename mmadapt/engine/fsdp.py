"""FSDP2 for the trainer: shard a model, give a plain module back after training, and move
tensors between their whole form (checkpoints, exports) and their sharded ``DTensor`` form.

Every helper is the identity on a plain tensor or module, so single-process code calls them
unchanged. Gathering (:func:`full`, :func:`unshard`) is a collective: every rank must call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

try:  # DTensor: the parameters and optimizer moments of an FSDP-sharded model
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]

_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def is_dtensor(value: Any) -> bool:
    return DTensor is not None and isinstance(value, DTensor)


def full(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor on this rank (an FSDP shard is gathered: every rank must call this)."""
    value = value.detach()
    return value.full_tensor() if is_dtensor(value) else value


def like(whole: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out like ``target`` (sharded the same way when ``target`` is a DTensor)."""
    if is_dtensor(target):
        return distribute_tensor(whole.to(target.device_mesh.device_type, target.dtype), target.device_mesh, target.placements)
    return whole.to(target.device, target.dtype)


@dataclass
class Sharded:
    """What ``fully_shard`` changed on a model, to give back a plain module after training."""

    slots: list[tuple[torch.nn.Module, str, torch.nn.Parameter]]
    classes: list[tuple[torch.nn.Module, type]]
    hooks: list[tuple[torch.nn.Module, str, set]]
    attributes: list[tuple[torch.nn.Module, set]]


def shard(model: torch.nn.Module) -> Sharded:
    """Shard ``model`` with FSDP2: each element of its ModuleLists (the layers) is a unit, the rest the root."""
    from torch.distributed.fsdp import fully_shard

    modules = list(model.modules())
    record = Sharded(
        slots=[(m, leaf, p) for m in modules for leaf, p in m._parameters.items() if p is not None],
        classes=[(m, type(m)) for m in modules],
        hooks=[(m, attr, set(getattr(m, attr).keys())) for m in modules for attr in _HOOK_DICTS if hasattr(m, attr)],
        attributes=[(m, set(vars(m))) for m in modules],
    )
    units = [child for m in modules if isinstance(m, torch.nn.ModuleList) for child in m]
    for unit in reversed(units):  # inner units before the ones that hold them
        if any(p.numel() for p in unit.parameters()):
            fully_shard(unit)
    fully_shard(model)
    return record


def unshard(record: Sharded) -> None:
    """Gather the trained weights into the model's original parameters and take FSDP off (every rank)."""
    gathered: dict[int, torch.Tensor] = {}
    for module, leaf, original in record.slots:
        current = module._parameters.get(leaf)
        if current is None:
            continue
        if id(current) not in gathered:
            gathered[id(current)] = full(current)
        with torch.no_grad():
            original.data = gathered[id(current)].to(original.dtype).clone()
        original.grad = None
        module._parameters[leaf] = original
    for module, cls in record.classes:
        module.__class__ = cls
    for module, attr, before in record.hooks:
        hooks = getattr(module, attr)
        for key in [k for k in hooks if k not in before]:
            del hooks[key]
    for module, before in record.attributes:  # FSDP state, _is_fsdp_managed_module (generate() checks it) ...
        for key in [k for k in vars(module) if k not in before]:
            delattr(module, key)

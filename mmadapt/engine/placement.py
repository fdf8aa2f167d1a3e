"""Where the processes of a parallel run go: one GPU each, or a fair share of the CPU cores.

``slot_envs`` says, for each of N processes that run at once (a *slot*), the environment it starts
with: ``CUDA_VISIBLE_DEVICES`` (the GPUs round-robin over the slots, so N <= GPUs puts one process
on each GPU) and the thread counts of the OpenMP / MKL / OpenBLAS pools (the usable cores split
evenly, at least 1; never more than the parent's own ``OMP_NUM_THREADS`` when that is set, so a
cap a user put on a shared machine holds for each process). ``apply_env`` is the spawned child's
initializer: it sets them before anything in the child imports torch — this module imports
nothing heavy, so unpickling it does not load torch either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_cap() -> int | None:
    """The parent's ``OMP_NUM_THREADS`` as a number, or None when it is unset or not a positive integer."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ids or UUIDs).

    Asks torch how many there are (``torch.cuda.device_count`` does not create a CUDA context, so
    processes spawned afterwards start clean) and keeps the parent's ``CUDA_VISIBLE_DEVICES``
    names, so a parent limited to "2,3" places its children on 2 and 3.
    """
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def slot_envs(slots: int, gpus: Sequence[str], cores: int, cap: int | None = None) -> list[dict[str, str]]:
    """The environment of each of ``slots`` processes that run at once (see the module docstring)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1 (got {slots})")
    threads = max(1, cores // slots)
    if cap is not None:
        threads = max(1, min(threads, cap))
    envs = []
    for slot in range(slots):
        env = dict.fromkeys(THREAD_VARS, str(threads))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    return envs


def apply_env(env: Mapping[str, str] | None) -> None:
    """In a spawned child, before its work is unpickled (and torch imported): set ``env``."""
    from mmadapt.models.quiet import drop_import_notices

    drop_import_notices()
    if env:
        os.environ.update(env)

"""Multi-process runs on torch.distributed: what torchrun / ``accelerate launch`` set up, used plainly.

A launcher (``torchrun``, ``python -m torch.distributed.run``, ``accelerate launch``, ``srun``
+ torchrun) starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. This module reads them, opens the default process group
(gloo on CPU, nccl on CUDA), and offers the few collectives the trainer, the runner and
batch inference need: barriers, sums, shards by rank and gathering results on rank 0 in
input order. Without those variables (or with ``WORLD_SIZE=1``) every helper is the
single-process identity, so the same code runs unchanged on a laptop.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmadapt.engine.seed import seed_everything
from mmadapt.errors import MmadaptError

T = TypeVar("T")
TIMEOUT_ENV = "MMADAPT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600  # non-main ranks wait at a barrier while rank 0 evaluates


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def multi(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MmadaptError(f"environment variable {name}={value!r} is not an integer", fix="launch with torchrun or accelerate") from None


def detect() -> DistEnv:
    """Rank, world size and local rank from the launcher's environment (1 process when unset)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), _int_env("LOCAL_RANK", 0))
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise MmadaptError(f"RANK={rank} WORLD_SIZE={world} is not a valid process layout", fix="launch with torchrun or accelerate")
    return DistEnv(rank, world, local)


def backend() -> str:
    """nccl where CUDA is present, gloo otherwise (``MMADAPT_DIST_BACKEND`` overrides)."""
    return os.environ.get("MMADAPT_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")


def initialize() -> bool:
    """Open the default process group when the launcher asked for more than one process.

    Returns True when this process is part of a multi-process job (group ready), False for
    a plain single process. Idempotent.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    env = detect()
    if not env.multi:
        return False
    if not dist.is_available():
        raise MmadaptError("this torch build has no torch.distributed", fix="install a torch wheel with distributed support")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise MmadaptError(
            f"WORLD_SIZE={env.world_size} but {', '.join(missing)} is not set",
            fix="start the job with torchrun / accelerate launch / mmadapt launch",
        )
    name = backend()
    if name == "nccl":
        torch.cuda.set_device(env.local_rank)
    timeout = dt.timedelta(seconds=_int_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend=name, init_method="env://", rank=env.rank, world_size=env.world_size, timeout=timeout)
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Close the process group (no-op when none is open)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes, evaluates and logs."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device() -> torch.device:
    """The device this rank computes on: its local GPU under nccl, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """A distinct seed per rank (rank 0 keeps ``seed``, so one process behaves as before)."""
    r = rank() if rank_ is None else rank_
    return (seed + 1_000_003 * r) % 2**31


def seed_rank(seed: int) -> int:
    """Seed python, numpy and torch for this rank; return the seed used."""
    used = rank_seed(seed)
    seed_everything(used)
    return used


def all_reduce_sum(values: Sequence[float] | float) -> list[float]:
    """The sum over ranks of each number (float64, on the backend's device)."""
    flat = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if not is_distributed():
        return flat
    tensor = torch.tensor(flat, dtype=torch.float64, device=device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """The positions of ``range(n)`` this rank owns: every ``world``-th one from ``rank``."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items`` (round robin, balanced to within one item)."""
    return [items[i] for i in shard_indices(len(items), rank_, world)]


def gather_in_order(local: Sequence[Any], n: int) -> list[Any] | None:
    """Gather every rank's ``local`` results (made from :func:`shard` of ``n`` items) on rank 0.

    Rank 0 gets the ``n`` results in input order; other ranks get None. A single process
    gets ``list(local)``.
    """
    if not is_distributed():
        return list(local)
    pairs = list(zip(shard_indices(n), local, strict=True))
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(pairs, gathered, dst=0)
    if not is_main():
        return None
    out: list[Any] = [None] * n
    seen = 0
    for part in gathered or []:
        for index, value in part:
            out[index] = value
            seen += 1
    if seen != n:
        raise MmadaptError(f"gathered {seen} results for {n} inputs", fix="every rank must shard the same list")
    return out


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- launching


def parse_rdzv(value: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), or a one-line error."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MmadaptError(f"--rdzv {value!r} is not HOST:PORT", fix="give the first node's address, e.g. --rdzv node001:29500")
    return host, int(port)


def torchrun_command(
    cli_args: Sequence[str], *, nproc: int, nnodes: int = 1, rdzv: str | None = None, rdzv_id: str = "mmadapt",
    python: str | None = None,
) -> list[str]:
    """The ``python -m torch.distributed.run ... -m mmadapt.cli ARGS`` command line for one node."""
    import sys

    if nproc < 1 or nnodes < 1:
        raise MmadaptError("--nproc and --nnodes must be at least 1")
    command = [python or sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if rdzv:
        parse_rdzv(rdzv)
        command += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv, "--rdzv_id", rdzv_id]
    elif nnodes > 1:
        raise MmadaptError(f"--nnodes {nnodes} needs --rdzv HOST:PORT", fix="give the first node's address, e.g. --rdzv node001:29500")
    else:
        command += ["--standalone"]
    return command + ["-m", "mmadapt.cli", *cli_args]


def slurm_script(
    cli_args: Sequence[str], *, job_name: str, nproc: int, nnodes: int, workdir: str, log_dir: str,
    gpus_per_node: int = 0, cpus_per_task: int | None = None, time: str = "04:00:00", partition: str | None = None,
    port: int = 29500, python: str | None = None,
) -> str:
    """An sbatch script: one srun task per node, each a torchrun whose rendezvous is on the first node."""
    import shlex
    import sys

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", job_name):
        raise MmadaptError(f"job name {job_name!r} must be letters, digits, . _ -")
    if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", time):
        raise MmadaptError(f"--time {time!r} is not a Slurm time", fix="e.g. --time 04:00:00 or 1-00:00:00")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={cpus_per_task or max(1, nproc) * 4}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={log_dir}/%x-%j.out",
    ]
    if gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    if partition:
        if not re.fullmatch(r"[A-Za-z0-9._,-]{1,128}", partition):
            raise MmadaptError(f"--partition {partition!r} is not a partition name")
        lines.append(f"#SBATCH --partition={partition}")
    torchrun = [
        python or sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "$SLURM_NNODES", "--nproc_per_node", str(nproc),
        "--rdzv_id", "$SLURM_JOB_ID", "--rdzv_backend", "c10d", "--rdzv_endpoint", "$head_node:$rdzv_port",
        "-m", "mmadapt.cli", *cli_args,
    ]
    quoted = " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in torchrun)
    lines += [
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(workdir)}",
        "# the first node of the allocation hosts the rendezvous; every node runs one torchrun",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"rdzv_port=${{MMADAPT_RDZV_PORT:-{port}}}",
        f"srun --kill-on-bad-exit=1 {quoted}",
        "",
    ]
    return "\n".join(lines)

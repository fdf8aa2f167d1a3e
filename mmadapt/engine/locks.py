"""One lock per recipe folder: ``<recipe dir>/.lock``, held only while a version number is
allocated and renamed in, and around every move of ``current`` with its audit line.

It is a POSIX record lock (``fcntl.lockf``): the kind NFS supports (NLM for v3, built into v4),
released by the kernel when the holder dies, so a killed run never leaves it held. Such locks
belong to the process, so the helper is reentrant (a thread that holds it may take it again) and
serialises the threads of one process itself; it never closes the lock file while the lock is
held (closing any descriptor of the file would release the process's lock).

Where the file system has no lock support (``ENOLCK``, e.g. NFS mounted ``nolock`` without a
lock daemon) it warns and goes on without: versions still cannot collide (the rename into
``vNNNN`` retries the next number), but two hosts could interleave pointer moves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from mmadapt.errors import ArtifactError

LOCK = ".lock"
TIMEOUT_S = 300.0  # the lock is held for a rename, a pointer write and an audit line: seconds at most
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class _Held:
    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_guard = threading.Lock()
_held: dict[str, _Held] = {}


def _forget_after_fork() -> None:  # a forked child holds no POSIX lock and none of its parent's threads
    global _guard, _held
    _guard, _held = threading.Lock(), {}


os.register_at_fork(after_in_child=_forget_after_fork)


def _lock_file(path: Path, timeout: float) -> int | None:
    """Open ``path`` and wait for its exclusive lock; the descriptor, or None where locks are unsupported."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, delay = time.monotonic() + timeout, 0.001
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                warnings.warn(f"{path}: no file locks here ({exc.strerror}); concurrent runs of this recipe "
                              "are not serialised", RuntimeWarning, stacklevel=2)
                return None
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise ArtifactError(
                    f"another process has held {LOCK} for more than {timeout:.0f} s", path=path.parent,
                    fix=f"find it (lslocks | grep {path}) and let it finish, or end it",
                ) from None
            raise


@contextlib.contextmanager
def recipe_lock(rdir: Path, timeout: float = TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of the (existing) recipe folder ``rdir`` for the ``with`` block."""
    key = os.path.realpath(rdir)
    with _guard:
        held = _held.setdefault(key, _Held())
    if not held.thread_lock.acquire(timeout=timeout):
        raise ArtifactError(f"another thread has held {LOCK} for more than {timeout:.0f} s", path=rdir)
    try:
        if held.depth == 0:
            held.fd = _lock_file(Path(key) / LOCK, timeout)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                os.close(fd)  # closing releases the lock
    finally:
        held.thread_lock.release()

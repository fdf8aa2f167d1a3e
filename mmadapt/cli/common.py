"""What several commands share: the --set help, loading a recipe, the --output-dir option, write errors."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

import click

SET_HELP = "Override a recipe key, e.g. --set train.steps=50 (repeatable; values are YAML)."

output_dir_option = click.option(
    "--output-dir", default=None, help="Where the runs are (default: the recipe's output_dir, or runs/)."
)

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def _output_errors(output: Path):
    """Turn a failed write under ``output`` (disk full, read-only, no permission) into one ArtifactError.

    The artifact writer has already removed its temporary version folder when this runs (it
    cleans up on any exception), so the previous version and ``current`` are untouched. Weights
    are written by safetensors, whose error carries the OS error number in its text.
    """
    from mmadapt.errors import ArtifactError

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only write errors are translated; everything else re-raised
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None and type(exc).__name__ == "SafetensorError":
            found = re.search(r"os error (\d+)", str(exc))
            code = int(found.group(1)) if found else None
        if code not in WRITE_ERRNOS:
            raise
        where = getattr(exc, "filename", None) or output
        fix = (
            "free disk space or choose another output_dir (--set output_dir=...); the previous version is intact"
            if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "choose a writable output_dir (--set output_dir=...); the previous version is intact"
        )
        raise ArtifactError(f"cannot write: {os.strerror(code)}", path=where, fix=fix) from None


def _load(recipe_path: str, overrides: tuple[str, ...]):
    from mmadapt.recipe import load_recipe

    return load_recipe(recipe_path, overrides)

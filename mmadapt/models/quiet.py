"""Keep known-harmless library output out of mmadapt's own, around one call at a time.

``quiet_libraries()`` is used around loading a model and around ``generate`` — never at import,
never for the whole process. Inside it:

* transformers' own progress bars ("Loading weights", "Writing model shards") are off: mmadapt
  prints its own progress. huggingface_hub's download bars are left alone (a first download of
  a hub model can take minutes);
* the warnings in :data:`HARMLESS_WARNINGS` are ignored, each for the reason written beside it;
  every other warning still shows;
* with ``logs_errors_only=True``, transformers logs errors only (for ``generate``: notices about a
  model's own ``generation_config.json``). Loading keeps transformers' warnings, so a checkpoint
  with missing or unexpected weights is still reported.

Everything is restored on exit, and exceptions pass through unchanged.

``drop_import_notices()`` is the one process-wide exception, called by the CLI and by the
children it spawns: it drops the log records in :data:`IMPORT_NOTICES`, which libraries write while
they are imported (before any block above could be entered), each for the reason beside it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

# (category, start of the message, why it is harmless)
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, "`is_gradient_checkpointing` is deprecated",
     "peft's PeftModel reads transformers' deprecated alias of is_activation_checkpointing; nothing to act on"),
    (UserWarning, "Position ids are not supported for parameter efficient tuning",
     "peft's prompt tuning drops the position ids that generate() passes and places its virtual tokens itself"),
)


# (logger, start of the message, why it is harmless)
IMPORT_NOTICES: tuple[tuple[str, str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "peft imports bitsandbytes whenever it is installed; on CPUs with AVX512-BF16 bitsandbytes then looks for an "
     "optional 4-bit matmul kernel that only a hub download provides, and without it uses its own CPU path"),
)


class _DropNotice(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.message)


def drop_import_notices() -> None:
    """Drop the records of :data:`IMPORT_NOTICES` for the rest of the process (idempotent)."""
    for name, message, _why in IMPORT_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.message == message for f in logger.filters):
            logger.addFilter(_DropNotice(message))


def _no_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def quiet_libraries(*, logs_errors_only: bool = False) -> Iterator[None]:
    """No transformers progress bars and none of :data:`HARMLESS_WARNINGS` inside the block (see the module)."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5: a hook on its own bars only
    previous_hook = set_hook(_no_bar) if set_hook is not None else None
    level = hf_logging.get_verbosity()
    if logs_errors_only:
        hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            for category, message, _why in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=re.escape(message), category=category)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if set_hook is not None:
            set_hook(previous_hook)

"""One loaded base model shared by the stacks of several versions (``mmadapt serve``).

Versions of recipes whose modality gives the same :meth:`~mmadapt.protocols.Modality.base_key`
are composed over one :class:`SharedBase`: the first loads the model, the others reuse it
(:meth:`~mmadapt.protocols.Modality.share_stack`), and each version's LoRA (or other peft) adapter
is loaded once into it as a named adapter (peft's ``load_adapter``). A predictor answers through
:meth:`SharedBase.use`, which holds the base's lock and activates the version's adapter (or turns
every adapter off for a version without one), so versions take turns on the one model and each
batch runs with exactly its own weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class SharedBase:
    """A loaded model several stacks use; ``model`` becomes a peft model once an adapter is loaded."""

    def __init__(self, model: Any):
        self.model = model
        self.adapters: list[str] = []
        self.lock = threading.RLock()

    def add_adapter(self, folder: Path) -> str:
        """Load the peft adapter saved in ``folder`` as a named adapter of the base (once); its name."""
        from peft import PeftModel

        name = adapter_name(folder)
        with self.lock:
            if name in self.adapters:
                return name
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name, is_trainable=False)
            self.model.eval()
            self.adapters.append(name)
        return name

    @contextlib.contextmanager
    def use(self, adapter: str | None) -> Iterator[Any]:
        """The model with ``adapter`` active (None: every adapter off), held for this caller alone."""
        with self.lock:
            if not self.adapters:
                yield self.model
            elif adapter is None:
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(adapter)
                yield self.model


def adapter_name(folder: Path) -> str:
    """A peft adapter name for a saved adapter folder: unique per folder, valid as a module key."""
    folder = Path(folder).resolve()
    return f"a{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"

"""One loaded base model shared by the stacks of several versions (``mmadapt serve``).

Versions of recipes whose modality gives the same :meth:`~mmadapt.protocols.Modality.base_key`
are composed over one :class:`SharedBase`: the first loads the model, the others reuse it
(:meth:`~mmadapt.protocols.Modality.share_stack`), and each version's adapter is loaded once into
it as a named adapter. How an adapter loads and how one is made the active one is the library's
business, so it is the modality's choice of :class:`AdapterKind`: peft's ``load_adapter`` /
``set_adapter`` on a transformers model (:class:`PeftAdapters`, text and speech), or diffusers'
``load_lora_weights`` / ``set_adapters`` on a pipeline (the image modality's). A predictor answers
through :meth:`SharedBase.use`, which holds the base's lock and activates the version's adapter
(or turns every adapter off for a version without one), so versions take turns on the one model
and each batch runs with exactly its own weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol


class AdapterKind(Protocol):
    """How named adapters load into a shared model and which one answers (called under its lock)."""

    def load(self, model: Any, folder: Path, name: str, **options: Any) -> Any:
        """Load the adapter saved in ``folder`` as ``name``; the model to use from now on."""

    def active(self, model: Any, name: str | None) -> AbstractContextManager[Any]:
        """``model`` with adapter ``name`` alone active (None: every adapter off) while the block runs."""


class PeftAdapters:
    """peft's named adapters on a transformers model (the text and speech modalities)."""

    def load(self, model: Any, folder: Path, name: str, **options: Any) -> Any:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
        return model.eval()

    @contextlib.contextmanager
    def active(self, model: Any, name: str | None) -> Iterator[Any]:
        if name is None:
            with model.disable_adapter():
                yield model
        else:
            model.set_adapter(name)
            yield model


class SharedBase:
    """A loaded model several stacks use; ``model`` becomes a peft model once a peft adapter is loaded."""

    def __init__(self, model: Any, kind: AdapterKind | None = None):
        self.model = model
        self.kind = kind or PeftAdapters()
        self.adapters: list[str] = []
        self.lock = threading.RLock()

    def add_adapter(self, folder: Path, **options: Any) -> str:
        """Load the adapter saved in ``folder`` as a named adapter of the base (once); its name.
        ``options`` go to the kind's ``load`` (the image LoRA's inference scale)."""
        name = adapter_name(folder)
        with self.lock:
            if name in self.adapters:
                return name
            self.model = self.kind.load(self.model, Path(folder), name, **options)
            self.adapters.append(name)
        return name

    @contextlib.contextmanager
    def use(self, adapter: str | None) -> Iterator[Any]:
        """The model with ``adapter`` active (None: every adapter off), held for this caller alone."""
        with self.lock:
            if not self.adapters:
                yield self.model
            else:
                with self.kind.active(self.model, adapter) as model:
                    yield model


def adapter_name(folder: Path) -> str:
    """An adapter name for a saved adapter folder: unique per folder, valid as a module key."""
    folder = Path(folder).resolve()
    return f"a{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"

"""Turn a model reference into something ``from_pretrained`` loads, offline-safe.

A reference is one of:

* ``embedded:NAME`` — a bundled default (see :mod:`mmadapt.models.embedded`);
* a local folder — used as it is;
* a hub id (``org/name``) — passed to ``from_pretrained``; where no hub answers it must
  already be in the local Hugging Face cache.

Weights load from safetensors only. A local folder whose weights are pickle files
(``.bin``/``.pt`` ...) is refused unless pickles are trusted for this process: the
loaders take ``allow_pickle=True``, or, independent of any recipe, the environment has
``MMADAPT_TRUST_REMOTE_PICKLE=1`` (what ``mmadapt run --trust-remote-pickle`` sets).
``trust_remote_code`` is separate: it is off unless the recipe sets ``trust_remote_code: true``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mmadapt.errors import ArtifactError, ModelError
from mmadapt.models.embedded import EMBEDDED

TRUST_PICKLE_ENV = "MMADAPT_TRUST_REMOTE_PICKLE"

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def resolve_model(ref: str) -> str:
    """A loadable location for ``ref``: a local folder path, or a hub id."""
    if not ref.strip():  # Path("") is the current folder
        raise ModelError("empty model reference", fix="use a local folder, a hub id (org/name) or embedded:NAME")
    if ref.startswith("embedded:"):
        alias = ref.split(":", 1)[1]
        model = EMBEDDED.get(alias)
        if model is None:
            raise ModelError(
                f"unknown embedded model {alias!r}",
                fix=f"use one of: {', '.join('embedded:' + a for a in EMBEDDED)} (see `mmadapt models list`)",
            )
        return str(model.folder())
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError("a model path must be a folder (config + safetensors weights)", path=ref)
        return str(path.resolve())
    if HUB_ID.match(ref):
        return ref
    raise ModelError(
        "not a local folder, a hub id (org/name) or embedded:NAME",
        path=ref,
        fix="check the path, or use `mmadapt models list` for the embedded models",
    )


def pickle_trusted(allow_pickle: bool | None = None) -> bool:
    """Whether pickle weights may load: ``allow_pickle`` when given, else ``$MMADAPT_TRUST_REMOTE_PICKLE == "1"``."""
    if allow_pickle is not None:
        return bool(allow_pickle)
    return os.environ.get(TRUST_PICKLE_ENV, "").strip() == "1"


def check_safetensors_only(folder: str | Path, *, allow_pickle: bool | None = None, publish: bool = False) -> None:
    """Refuse pickle weights: they can run code when loaded. The one check, for both directions:

    * loading a model folder (the default): a ``ModelError`` when its weights are pickle files
      and none is safetensors (``training_args.bin``, a Trainer's settings, does not count),
      unless pickles are trusted: ``allow_pickle``, or when it is None the process-wide switch
      (:func:`pickle_trusted`);
    * publishing an artifact (``publish=True``, :meth:`mmadapt.engine.artifact.ArtifactWriter.commit`):
      an ``ArtifactError`` for any pickle file at all, trusted or not: what mmadapt writes is
      safetensors only.
    """
    path = Path(folder)
    if not path.is_dir() or (not publish and pickle_trusted(allow_pickle)):
        return
    files = [p for p in path.rglob("*") if p.suffix in (".safetensors", *PICKLE_SUFFIXES) and p.is_file()]
    if publish:
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ArtifactError(f"artifact would contain a pickle file {pickles[0].name}", path=folder, fix="save weights as safetensors")
        return
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin"]
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise ModelError(
            f"weights are pickle files ({pickles[0].name}); mmadapt loads safetensors only",
            path=folder,
            fix="convert the checkpoint to safetensors, or pass --trust-remote-pickle if you trust its source",
        )


def load_error(ref: str, exc: BaseException) -> ModelError:
    """A one-line ModelError for a failed ``from_pretrained`` of ``ref``."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if HUB_ID.match(ref) and not Path(ref).exists():
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return ModelError(
            f"cannot load hub model{' (HF_HUB_OFFLINE=1)' if offline else ''}: {first[:200]}",
            path=ref,
            fix="download it where a hub answers and pass the local folder, or use an embedded:NAME model",
        )
    if "custom code" in first:
        return ModelError(
            "the model needs its own Python code to load (trust_remote_code is off)",
            path=ref,
            fix="set trust_remote_code: true in the recipe only if you trust the code in this model folder",
        )
    return ModelError(f"cannot load model: {first[:200]}", path=ref, fix="check that the folder holds a complete model")

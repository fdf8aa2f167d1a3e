"""The embedded shapes-world models, shipped in this package (``mmadapt/models/shapes/``).

* ``shapes-clip``: a small ``transformers.CLIPModel`` + ``CLIPTokenizer`` +
  ``CLIPImageProcessor`` folder (32x32 images). It is the *judge*: after contrastive
  training on the base world it was fine-tuned with 20% brand-style pairs (captions ending
  in ``zentrix style``), so its image space tells the brand look apart (CLIP-I).
* ``shapes-diffusion``: a ``StableDiffusionPipeline`` folder (VAE with one 2x
  downsampling, small UNet, the text tower of the base CLIP *before* the brand
  fine-tune, so the generator has never seen the brand, DDIM scheduler with x0
  clipping: use 25 steps and guidance ~5).

Both were trained by ``python -m tools.shapes_train`` on the procedurally
generated shapes world (``tools/shapes_world.py``); no download is involved. ``tools/`` is
project tooling, in a source checkout only: ``tools/README.md`` tells how to rebuild these.
Each shipped folder carries ``.mmadapt-hashes.json``; the loaders verify every file
against it and refuse a folder that does not match (a one-line ``ModelError``).
"""

from __future__ import annotations

from pathlib import Path

from mmadapt.errors import ModelError
from mmadapt.models.cache import HASHES_FILE, verify

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
TRAIN_COMMAND = "python -m tools.shapes_train --out DIR --minutes 60"


def _verified(name: str, root: Path | None = None) -> Path:
    folder = (root or SHAPES_DIR) / name
    if not folder.is_dir():
        raise ModelError(
            f"embedded model {name!r} is missing",
            path=str(folder),
            fix=f"reinstall mmadapt, or train it from a source checkout: {TRAIN_COMMAND} and copy DIR/{name} there",
        )
    if not (folder / HASHES_FILE).is_file():
        raise ModelError(
            f"embedded model {name!r} has no {HASHES_FILE}",
            path=str(folder),
            fix="reinstall mmadapt (the shipped folder is incomplete)",
        )
    if not verify(folder):
        raise ModelError(
            f"embedded model {name!r} does not match its hashes (a file was changed, added or removed)",
            path=str(folder),
            fix="reinstall mmadapt or restore the folder from git",
        )
    return folder


def embedded_shapes_diffusion(root: Path | None = None) -> Path:
    """The verified ``shapes-diffusion`` folder: ``StableDiffusionPipeline.from_pretrained(folder,
    safety_checker=None, requires_safety_checker=False)`` loads it offline."""
    return _verified("shapes-diffusion", root)


def embedded_shapes_clip(root: Path | None = None) -> Path:
    """The verified ``shapes-clip`` folder: ``CLIPModel`` / ``CLIPTokenizer`` /
    ``CLIPImageProcessor.from_pretrained(folder)`` load it offline."""
    return _verified("shapes-clip", root)


def load_shapes_pipeline(folder: Path | None = None):
    """The shapes-diffusion ``StableDiffusionPipeline`` (CPU, float32, no safety checker), with
    its shipped sampler restored.

    ``StableDiffusionPipeline.__init__`` turns a scheduler's ``clip_sample`` off (a legacy
    fix for old Stable Diffusion configs). This small model needs the x0 clipping its
    ``scheduler/scheduler_config.json`` asks for (see
    ``tools.shapes_unet.sampling_scheduler``), so the scheduler is re-read from
    that file and set after construction. Code that loads the folder itself should do the
    same: ``pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")``.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = Path(folder or embedded_shapes_diffusion())
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    return pipe


def load_shapes_clip(folder: Path | None = None):
    """``(CLIPModel, CLIPTokenizer)`` of shapes-clip, in eval mode."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = folder or embedded_shapes_clip()
    return CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)

"""The shared backbone of `mmadapt serve` for images: a prompt-only version and two LoRA versions of
one tiny SD recipe, served from one pool, share one loaded pipeline with the two LoRAs as diffusers
named adapters, and each answers (interleaved across versions, and batched) with exactly the pixels
of the version loaded on its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mmadapt.engine.runner import load_artifact, run
from mmadapt.recipe import load_recipe
from mmadapt.serve.pool import Pool
from tests.image.test_image_strategies import brand_subset, pixels, recipe_file, tiny_pipe  # noqa: F401 - fixtures

PROMPTS = ["two circles in a row", "a star at the top left"]


@pytest.mark.slow  # two LoRA trainings of 4 steps on the tiny pipeline, three versions generated alone and shared
def test_three_image_versions_share_one_pipeline_and_answer_as_each_alone(tmp_path, tiny_pipe, brand_subset):  # noqa: F811
    dirs = []
    for name, strategies, seed in (("base", {"prompt": {"template": "{prompt}, flat colours"}}, 0),
                                   ("lora-a", {"adapter": {"r": 4, "alpha": 4}}, 1),
                                   ("lora-b", {"prompt": {"template": "{prompt}, flat colours"}, "adapter": {"r": 4, "alpha": 8, "scale": 0.5}}, 2)):
        folder = tmp_path / name
        folder.mkdir()
        path = recipe_file(folder, tiny_pipe, brand_subset, strategies, eval={"metrics": ["palette_adherence"], "latency_samples": 1, "bootstrap": 0})
        recipe = load_recipe(path, (f"output_dir={tmp_path / 'runs'}", f"train.seed={seed}", "train.lr=5e-2"))
        dirs.append(run(recipe, progress=False).version_dir)
    alone = [[pixels(p.output) for p in load_artifact(d).predictor.predict(PROMPTS)] for d in dirs]
    assert all(np.abs(alone[i][0] - alone[j][0]).max() > 1 for i, j in ((0, 1), (1, 2), (0, 2)))  # the comparison can fail

    loads = []
    pool = Pool(max_batch=4, loader=lambda d: (loads.append(d), load_artifact(d, bases=pool.bases))[1])
    loaded = [pool.get(d) for d in dirs]
    stacks = [x.artifact.stack for x in loaded]
    assert len(loads) == 3 and len(pool.bases) == 1  # three versions loaded, one base pipeline among them
    assert stacks[0].pipe is stacks[1].pipe is stacks[2].pipe and stacks[0].shared is stacks[2].shared
    assert len(stacks[0].shared.adapters) == 2 and stacks[0].adapter is None and stacks[1].adapter != stacks[2].adapter

    async def interleaved():  # every version's requests at once: each batch runs with its own LoRA (or none)
        calls = [(i, k, loaded[i].submit([p])) for _ in range(2) for i in (2, 0, 1) for k, p in enumerate(PROMPTS)]
        return [(i, k, (await future)[0].output) for i, k, future in calls]

    for i, k, image in asyncio.run(interleaved()):
        assert np.array_equal(pixels(image), alone[i][k]), (i, k)
    assert max(max(x.batches) for x in loaded) > 1  # requests of one version did run batched
    for i in (1, 0, 2):
        got = asyncio.run(_ask(loaded[i], PROMPTS))
        assert all(np.array_equal(pixels(p.output), a) for p, a in zip(got, alone[i]))
    pool.close()


async def _ask(loaded, prompts):
    return await loaded.submit(prompts)

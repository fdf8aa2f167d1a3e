"""The shared backbone of `mmadapt serve` (engine/shared.py): a prompt-only version and two LoRA
versions of one tiny recipe, served from one pool, share one loaded base with the two LoRAs as named
adapters, and each answers (interleaved, and batched) exactly as the version loaded on its own does."""

from __future__ import annotations

import asyncio

import pytest

import mmadapt
from mmadapt.engine.runner import load_artifact
from mmadapt.serve.pool import Pool


@pytest.mark.slow  # two LoRA trainings of 8 steps on the tiny model (~10 s)
def test_three_versions_share_one_base_and_answer_as_each_alone(make_recipe, write_recipe, talkative_lm, tmp_path):
    dirs = []
    for name, strategies, lr in (("base", {"prompt": {"system": "Answer briefly."}}, 5e-2),
                                 ("lora-a", {"prompt": {"system": "Answer briefly."}, "adapter": {"method": "lora", "r": 4, "alpha": 8}}, 5e-2),
                                 ("lora-b", {"prompt": {"system": "Answer briefly."}, "adapter": {"method": "lora", "r": 4, "alpha": 8}}, 1e-1)):
        raw = make_recipe(base_model=str(talkative_lm), name="tiny-shared", output_dir=str(tmp_path / "runs"), strategies=strategies,
                          train={"steps": 8, "lr": lr, "batch_size": 3, "warmup_steps": 0, "seed": 3},
                          eval={"metrics": ["token_f1"], "bootstrap": 0, "latency_samples": 1},
                          inference={"max_new_tokens": 6, "batch_size": 4})
        dirs.append(mmadapt.run(mmadapt.load_recipe(write_recipe(raw, name=f"{name}.yaml")), progress=False).version_dir)
    questions = ["What port does the gateway listen on?", "How do I restart the service?", "Where are the logs?"]
    alone = [[p.output for p in load_artifact(d).predictor.predict(questions)] for d in dirs]
    assert alone[0] != alone[1] and alone[1] != alone[2]  # the LoRAs change the answers: the comparison can fail

    pool = Pool(max_batch=8)
    loaded = [pool.get(d) for d in dirs]
    stacks = [x.artifact.stack for x in loaded]
    assert len(pool.bases) == 1 and stacks[0].shared is stacks[1].shared is stacks[2].shared
    assert len(stacks[0].shared.adapters) == 2 and stacks[0].adapter is None and stacks[1].adapter != stacks[2].adapter

    async def interleaved():  # every version's requests at once: each batch runs with its own adapter
        calls = [(i, k, loaded[i].submit([q])) for _ in range(2) for i in (2, 0, 1) for k, q in enumerate(questions)]
        return [(i, k, (await future)[0].output) for i, k, future in calls]

    answers = asyncio.run(interleaved())
    assert [a for _, _, a in answers] == [alone[i][k] for i, k, _ in answers]
    assert max(max(x.batches) for x in loaded) > 1  # requests of one version did run batched
    got = {i: [p.output for p in asyncio.run(_ask(loaded[i], questions))] for i in (1, 0, 2)}
    assert [got[0], got[1], got[2]] == alone
    pool.close()


async def _ask(loaded, questions):
    return await loaded.submit(questions)

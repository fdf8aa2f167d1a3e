"""The shared backbone of `mmadapt serve` for speech (engine/shared.py)."""

from __future__ import annotations

import pytest

import mmadapt
from mmadapt.protocols import get_modality


@pytest.mark.slow  # a LoRA training of 6 steps on the tiny Whisper
def test_versions_sharing_one_whisper_transcribe_as_each_alone(speech_recipe):
    """The shared backbone of `mmadapt serve` (engine/shared.py): a prompt-only version and a LoRA
    version share one loaded Whisper, the LoRA as a named adapter, and each transcribes as alone."""
    import asyncio

    from mmadapt.engine.runner import load_artifact
    from mmadapt.serve.pool import Pool

    plain = mmadapt.run(mmadapt.load_recipe(speech_recipe({"prompt": {}}, name="plain")), progress=False)
    tuned = mmadapt.run(mmadapt.load_recipe(speech_recipe({"prompt": {}, "adapter": {"r": 4, "alpha": 8}}, name="tuned")), progress=False)
    inputs = [e.input for e in get_modality("speech").load_data(tuned.recipe).eval]
    alone = [[p.output for p in load_artifact(d).predictor.predict(inputs)] for d in (plain.version_dir, tuned.version_dir)]
    assert alone[0] != alone[1]  # the LoRA changes the transcripts: the comparison can fail
    pool = Pool()
    loaded = [pool.get(d) for d in (tuned.version_dir, plain.version_dir)]  # the LoRA first: the plain one must turn it off
    assert len(pool.bases) == 1 and loaded[0].artifact.stack.shared is loaded[1].artifact.stack.shared

    async def both():
        return await asyncio.gather(loaded[1].submit(inputs), loaded[0].submit(inputs), loaded[1].submit(inputs))

    plain_1, lora, plain_2 = asyncio.run(both())
    assert [p.output for p in plain_1] == [p.output for p in plain_2] == alone[0] and [p.output for p in lora] == alone[1]
    pool.close()

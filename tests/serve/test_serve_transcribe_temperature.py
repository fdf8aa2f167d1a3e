"""A transcription's ``temperature`` with the real ``openai`` client against a tiny random Whisper:
0 (or none) is the version's own greedy transcript; above 0 the windows are sampled at it (different
from greedy, the same again for the same ``seed``, whatever the request is batched with); outside 0..1
is a 400 naming the field."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.serve.conftest import ROOT, served_recipe

openai = pytest.importorskip("openai")
SPEECH = ROOT / "datasets" / "speech-domain"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import numpy as np
    import soundfile as sf
    import torch

    from tests.fixtures.tiny import tiny_whisper

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve-temperature")
    clips = root / "clips"
    clips.mkdir()
    rows = [json.loads(line) for line in (SPEECH / "eval" / "metadata.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        shutil.copy(SPEECH / "eval" / row["file_name"], clips / row["file_name"])
    (clips / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = np.arange(16000 * 2) / 16000
    tone = root / "tone.wav"
    sf.write(
        tone,
        (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype("float32"),
        16000,
    )
    raw = {
        "name": "tiny-speech",
        "modality": "speech",
        "base_model": str(tiny_whisper(root / "whisper")),
        "data": {"eval": str(clips)},
        "strategies": {},
        "inference": {"max_new_tokens": 8, "batch_size": 4},
        "eval": {"bootstrap": 10, "latency_samples": 1},
        "output_dir": str(root / "runs"),
    }
    with served_recipe(raw, root) as served:
        yield {**served, "clips": [tone, *(clips / r["file_name"] for r in rows)]}


def _transcribe(served, clip, **extra):
    with open(clip, "rb") as handle:
        return served["client"].audio.transcriptions.create(model="tiny-speech", file=handle, **extra)


def _offline(served, inputs):
    return served["app"].state.pool.cached(served["version"]).artifact.predictor.predict(inputs)


def test_temperature_0_decodes_as_before_and_above_0_samples_reproducibly(served):
    from mmadapt.modalities.speech.predict import SpeechRequest

    for clip in served["clips"]:
        greedy = _offline(served, [str(clip)])[0].output
        plain, zero = _transcribe(served, clip), _transcribe(served, clip, temperature=0)
        assert plain.text == zero.text == greedy and zero.model_extra["mmadapt"]["temperature"] == 0.0
        sampled = [_transcribe(served, clip, temperature=1.0, extra_body={"seed": seed}) for seed in range(3)]
        assert all(s.model_extra["mmadapt"]["temperature"] == 1.0 for s in sampled)
        assert any(s.text != greedy for s in sampled), (greedy, [s.text for s in sampled])  # it samples
        assert _transcribe(served, clip, temperature=1.0, extra_body={"seed": 1}).text == sampled[1].text  # a seed repeats
        # the same draw offline, batched with other clips (each window has its own generator)
        others = [str(c) for c in served["clips"] if c != clip]
        together = _offline(served, [others[0], SpeechRequest(str(clip), temperature=1.0, seed=1), others[1]])
        assert together[1].output == sampled[1].text and together[0].output == _offline(served, [others[0]])[0].output


def test_a_temperature_outside_0_to_1_is_400_naming_it(served):
    for temperature in (1.5, 2.5):  # 1.5: past OpenAI's 0..1 for transcriptions; 2.5: past every endpoint's 0..2
        with pytest.raises(openai.BadRequestError, match="`temperature`") as info:
            _transcribe(served, served["clips"][0], temperature=temperature)
        assert info.value.body["param"] == "temperature" and info.value.status_code == 400

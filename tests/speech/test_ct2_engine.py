"""`inference.engine: ctranslate2`: prompt + retrieval stacks, a LoRA stack and an exported (merged)
version decode through CTranslate2 to the same greedy transcripts as through transformers (tiny
random Whisper, 8 eval clips; English-only and multilingual with a forced language)."""

from __future__ import annotations

import pytest

import mmadapt
from mmadapt.engine.export import export

pytest.importorskip("ctranslate2")


@pytest.fixture
def eval8(tmp_path):
    from tests.speech.conftest import copy_split

    copy_split("eval", tmp_path / "eval8", 8)
    return str(tmp_path / "eval8")


def _outputs(result) -> list[tuple]:
    return [(p.output, tuple(p.sources), p.info.get("first_pass")) for p in result.evaluation.predictions]


def _run(speech_recipe, strategies, name, eval8, **extra):
    inference = {"max_new_tokens": 12, "batch_size": 4, **extra.pop("inference", {})}
    path = speech_recipe(strategies, name=name, data={"eval": eval8}, inference=inference, **extra)
    return mmadapt.run(mmadapt.load_recipe(path), progress=False)


@pytest.mark.parametrize(
    "strategies",
    [{"prompt": {}, "retrieval": {"top_k": 3}}, {"adapter": {"r": 4, "alpha": 8}}],
    ids=["prompt+retrieval", "lora"],
)
def test_ctranslate2_engine_gives_the_same_transcripts(speech_recipe, eval8, strategies):
    hf = _run(speech_recipe, strategies, "hf", eval8)
    ct2 = _run(speech_recipe, strategies, "ct2", eval8, inference={"engine": "ctranslate2"})
    assert any(o for o, *_ in _outputs(hf)) and _outputs(ct2) == _outputs(hf)
    if "retrieval" in strategies:
        assert any(sources for _o, sources, _f in _outputs(hf)), "retrieval prompted some clips a second time"


def test_exported_version_served_through_ctranslate2(speech_recipe, eval8, tmp_path):
    lora = _run(speech_recipe, {"adapter": {"r": 4, "alpha": 8}}, "lora", eval8)
    folder = export(lora.version_dir, tmp_path / "exported")
    served = _run(speech_recipe, {}, "served", eval8, base_model=str(folder), inference={"engine": "ctranslate2"})
    assert [p.output for p in served.evaluation.predictions] == [p.output for p in lora.evaluation.predictions]


def test_multilingual_forced_language_through_ctranslate2(speech_recipe, eval8, tmp_path):
    from tests.fixtures.tiny import tiny_whisper

    folder = tiny_whisper(tmp_path / "ml", languages=("en", "fr", "de"), num_mel_bins=128)
    runs = [
        _run(speech_recipe, {}, f"ml-{engine}", eval8, base_model=str(folder), inference={"engine": engine, "language": "de"})
        for engine in ("transformers", "ctranslate2")
    ]
    assert any(p.output for p in runs[0].evaluation.predictions)
    assert [p.output for p in runs[1].evaluation.predictions] == [p.output for p in runs[0].evaluation.predictions]

"""Multilingual Whisper on a tiny random checkpoint with language tokens and 128 mel bins (large-v3's
input): a forced language, ``auto`` (detected per window) and ``translate`` decode token for token as
``generate`` does with the same language and task; a LoRA trains through the normal strategy path on
sequences that carry the language and task tokens; bad languages are one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import mmadapt
from mmadapt.cli import main
from mmadapt.modalities.speech.predict import Windows
from mmadapt.protocols import get_modality

LANGUAGES = ("en", "fr", "de", "es")


@pytest.fixture(scope="module")
def multilingual_dir(tmp_path_factory):
    from tests.fixtures.tiny import tiny_whisper

    torch.set_num_threads(1)
    return tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-ml"), languages=LANGUAGES, num_mel_bins=128)


def _stack(path):
    recipe = mmadapt.load_recipe(path)
    modality = get_modality("speech")
    return modality.new_stack(recipe), modality.load_data(recipe)


def _generate(stack, samples, **kwargs) -> str:
    feats = stack.processor.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape[1] == 128
    out = stack.model.generate(input_features=feats, max_new_tokens=10, **kwargs).tolist()[0]
    return stack.processor.tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    "language,task", [("fr", "transcribe"), ("auto", "transcribe"), ("de", "translate")], ids=["forced", "auto", "translate"]
)
def test_multilingual_prefix_decodes_as_generate(speech_recipe, multilingual_dir, language, task):
    inference = {"max_new_tokens": 10, "tokens_per_second": 0, "batch_size": 2, "language": language, "task": task}
    stack, data = _stack(speech_recipe({}, base_model=str(multilingual_dir), inference=inference))
    tok = stack.processor.tokenizer
    windows = Windows(stack, [e.input for e in data.train[:2]])
    batch = windows.batches[0]
    states = windows.encode(batch)
    prefixes = windows.task.prefixes(states, batch)
    texts = windows.decode(states, batch, [None] * len(batch))
    assert any(texts), "the tiny model says something"
    for row, n in enumerate(batch):
        sot, lang, task_token, no_ts = tok.convert_ids_to_tokens(prefixes[row])
        assert (sot, task_token, no_ts) == ("<|startoftranscript|>", f"<|{task}|>", "<|notimestamps|>")
        if language == "auto":  # detected as transformers detects it, and generate (which detects too) agrees
            feats = stack.processor.feature_extractor(windows.items[n][1], sampling_rate=16000, return_tensors="pt")
            assert prefixes[row][1] == stack.model.detect_language(feats.input_features).item()
            assert texts[row] == _generate(stack, windows.items[n][1], task=task)
        else:
            assert lang == f"<|{language}|>"
            assert texts[row] == _generate(stack, windows.items[n][1], language=language, task=task)


def test_multilingual_lora_trains_on_language_and_task_tokens(speech_recipe, multilingual_dir):
    from mmadapt.modalities.speech.tuning import IGNORE, encode_examples

    inference = {"max_new_tokens": 8, "batch_size": 2, "language": "fr"}
    path = speech_recipe({"adapter": {"r": 4, "alpha": 8}}, name="ml-lora", base_model=str(multilingual_dir), inference=inference)
    stack, data = _stack(path)
    tok = stack.processor.tokenizer
    for inputs, targets, _i in encode_examples(stack, data, seed=0):
        assert tok.convert_ids_to_tokens(inputs[:4]) == ["<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>"]
        assert targets[:3] == [IGNORE] * 3 and targets[3] != IGNORE
    base = mmadapt.run(
        mmadapt.load_recipe(speech_recipe({}, name="ml-base", base_model=str(multilingual_dir), inference=inference)),
        progress=False,
    )
    tuned = mmadapt.run(mmadapt.load_recipe(path), progress=False)
    assert tuned.manifest["parts"]["adapter"]["steps"] == 6
    assert [p.output for p in tuned.evaluation.predictions] != [p.output for p in base.evaluation.predictions]


def test_auto_language_training_detects_each_clip(speech_recipe, multilingual_dir):
    from mmadapt.modalities.speech.tuning import audio_features, cached_encoder_states, train_languages

    stack, data = _stack(speech_recipe({}, base_model=str(multilingual_dir)))
    features, _ = audio_features(stack, data, progress=False)
    langs = train_languages(stack, stack.model, features, cached_encoder_states(stack.model, features))
    assert langs == stack.model.detect_language(features).tolist()
    assert train_languages(stack, stack.model, features, None) == langs  # encoder states computed when not cached


def test_feature_extractor_follows_the_checkpoints_mel_bins(multilingual_dir, tmp_path):
    from mmadapt.modalities.speech.model import load_whisper

    folder = tmp_path / "model"
    shutil.copytree(multilingual_dir, folder)
    config = json.loads((folder / "processor_config.json").read_text())  # transformers 5 keeps the extractor here
    config["feature_extractor"]["feature_size"] = 80
    (folder / "processor_config.json").write_text(json.dumps(config))
    _model, processor, _info = load_whisper(str(folder))
    assert processor.feature_extractor.feature_size == 128
    assert processor.feature_extractor([0.0] * 16000, sampling_rate=16000, return_tensors="pt").input_features.shape[1] == 128


@pytest.mark.parametrize(
    "setting,model,message",
    [
        ("inference.language=xx", "multilingual", "unknown language code 'xx'"),
        ("inference.language=fr", "english", "an English-only Whisper cannot transcribe 'fr'"),
        ("inference.task=translate", "english", "an English-only Whisper cannot translate"),
    ],
)
def test_bad_language_is_one_line_exit_2(speech_recipe, multilingual_dir, tiny_whisper_dir, setting, model, message):
    base = multilingual_dir if model == "multilingual" else tiny_whisper_dir
    path = speech_recipe({}, base_model=str(base))
    result = CliRunner().invoke(main, ["run", str(path), "--quiet", "--set", setting])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]  # (before it: the run's header)
    assert len(errors) == 1 and message in errors[0] and result.output.strip().endswith(errors[0].strip()), result.output
    assert not (path.parent / "runs").exists()

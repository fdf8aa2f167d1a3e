"""The four speech strategies on a tiny random Whisper built in-process (seconds, no embedded model):
the prompt stays within Whisper's budget, retrieval finds the spoken terms, LoRA and full fine-tuning
train, save, reload in a new process to the same greedy transcripts, and resume after an interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmadapt
from mmadapt.engine import trainer
from mmadapt.modalities.speech.data import read_vocabulary
from mmadapt.modalities.speech.predict import fit_terms, prompt_text, prompt_token_ids, special_ids
from mmadapt.modalities.speech.prompt import SpeechPromptConfig, SpeechPromptStrategy
from mmadapt.modalities.speech.retrieval import SpeechRetrievalConfig, TermRetriever
from mmadapt.protocols import FitContext, get_modality
from mmadapt.retrieval import EmbeddingIndex
from mmadapt.retrieval.embedders import SoundEmbedder

DATASET = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"
VOCAB_300 = DATASET / "vocabulary-300.txt"


def _stack(recipe_path):
    recipe = mmadapt.load_recipe(recipe_path)
    modality = get_modality("speech")
    return recipe, modality, modality.new_stack(recipe), modality.load_data(recipe)


# ---------------------------------------------------------------- prompt


@pytest.mark.parametrize("budget", [24, 40, 200])  # each term fits alone (12 does not: refused)
def test_prompt_keeps_the_vocabulary_prefix_that_fits_the_budget(speech_recipe, tmp_path, budget):
    recipe, modality, stack, data = _stack(speech_recipe({"prompt": {}}, data={"vocabulary": str(VOCAB_300)}))
    config = SpeechPromptConfig(template="Terms: {terms}.", max_prompt_tokens=budget)
    part = tmp_path / "prompt"
    part.mkdir()
    strategy = SpeechPromptStrategy(config, recipe)
    strategy.fit(stack, data, part, FitContext(recipe, tmp_path / "work", progress=False))
    saved = json.loads((part / "prompt.json").read_text())
    terms = saved["terms"]
    vocabulary = read_vocabulary(VOCAB_300)
    assert terms and terms == vocabulary[: len(terms)] and saved["left_out"] == 300 - len(terms)

    strategy.compose(stack, part)
    tok = stack.processor.tokenizer
    ids = prompt_token_ids(stack, stack.prompt_terms)
    assert ids[0] == special_ids(tok)["prev"] and len(ids) - 1 <= budget
    assert tok.decode(ids[1:]).strip() == prompt_text(stack, terms) == "Terms: " + ", ".join(terms) + "."
    one_more = " " + prompt_text(stack, vocabulary[: len(terms) + 1])
    assert len(tok.encode(one_more, add_special_tokens=False)) > budget, "the longest prefix that fits is kept"


def test_prompt_budget_counts_the_real_whisper_tokens(speech_recipe, tmp_path):
    recipe, _m, stack, _d = _stack(speech_recipe({"prompt": {}}))
    stack.prompt_template = "Glossary: {terms}."
    kept = fit_terms(stack, read_vocabulary(VOCAB_300), 223)
    assert 0 < len(kept) < 300
    assert len(stack.processor.tokenizer.encode(" " + prompt_text(stack, kept), add_special_tokens=False)) <= 223


def test_prompt_template_must_hold_terms(speech_recipe, write_recipe):
    import yaml

    from mmadapt.errors import RecipeError

    raw = yaml.safe_load(Path(speech_recipe({"prompt": {"template": "no placeholder"}})).read_text())
    with pytest.raises(RecipeError, match=r"strategies\.prompt\.template"):
        mmadapt.load_recipe(write_recipe(raw, name="bad.yaml"))


# ---------------------------------------------------------------- retrieval


def _retriever(vocabulary_file: Path, **config) -> TermRetriever:
    vocabulary = read_vocabulary(vocabulary_file)
    index = EmbeddingIndex(meta={"embedder": SoundEmbedder.ref})
    index.add(SoundEmbedder().encode(vocabulary), [{"id": str(i), "term": t} for i, t in enumerate(vocabulary)])
    return TermRetriever(index, SpeechRetrievalConfig(**config))


# first-pass hypotheses of the kind Whisper tiny.en writes for the domain terms -> the terms spoken
MISHEARD = [
    ("We moved cube lynn to H L X 12.", {"Kubelyn", "HLX-12"}),
    ("Q P X nine errors are showing in Zen tricks.", {"QPX-9", "Zentrix"}),
    ("Roll back Vex Torah if T Q L fails.", {"Vextora", "TQL"}),
    ("the flarn cash is full again", {"flarn cache"}),
]


@pytest.mark.parametrize("vocabulary_file", [DATASET / "vocabulary.txt", VOCAB_300], ids=["40-terms", "300-terms"])
def test_retrieval_finds_the_spoken_terms_from_a_misheard_first_pass(vocabulary_file):
    retriever = _retriever(vocabulary_file, top_k=6)
    chosen = retriever.retrieve([text for text, _ in MISHEARD])
    for (text, spoken), terms in zip(MISHEARD, chosen):
        assert spoken <= set(terms[: len(spoken) + 1]), (text, terms)  # found, and ranked near the top
        assert len(terms) <= 6


def test_retrieval_proposes_nothing_for_plain_speech_and_respects_top_k():
    retriever = _retriever(VOCAB_300, top_k=2)
    plain, coded = retriever.retrieve(["the weather is nice today", "We moved cube lynn to H L X 12."])
    assert plain == []
    assert coded == ["Kubelyn", "HLX-12"]


def test_retrieval_run_prompts_each_utterance_with_its_own_terms(speech_recipe):
    result = mmadapt.run(mmadapt.load_recipe(speech_recipe({"retrieval": {"top_k": 3}})), progress=False)
    assert (result.version_dir / "retrieval" / "index" / "vectors.safetensors").is_file()
    assert result.manifest["costs"]["train_seconds"] == 0 and result.manifest["costs"]["trainable_params"] == 0
    for pred in result.evaluation.predictions:
        assert "first_pass" in pred.info and len(pred.sources) <= 3
    rows = [json.loads(line) for line in (result.version_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["eval/eval-000.wav", "eval/eval-001.wav"]
    assert {"wer", "b_wer", "u_wer", "hyp_norm", "ref_norm"} <= set(rows[0])


# ---------------------------------------------------------------- adapter and full: train, save, reload

RELOAD = """
import json, sys
import mmadapt
loaded = mmadapt.load_artifact(sys.argv[1])
print(json.dumps([p.output for p in loaded.predictor.predict(json.loads(sys.argv[2]))]))
"""


def _reload_in_new_process(version_dir: Path, inputs: list[str]) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, str(version_dir), json.dumps(inputs)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("strategies", "part_file"),
    [
        ({"adapter": {"r": 4, "alpha": 8}}, "adapter/adapter/adapter_model.safetensors"),
        ({"full": {}}, "full/model/model.safetensors"),
        (
            {"prompt": {}, "adapter": {"r": 4, "alpha": 8, "target_modules": "all-linear", "freeze_encoder": False}},
            "adapter/adapter/adapter_model.safetensors",
        ),
    ],
    ids=["lora-decoder", "full", "prompt+lora-all-linear"],
)
def test_trained_stack_reloads_in_a_new_process_to_the_same_transcripts(speech_recipe, strategies, part_file):
    base = mmadapt.run(mmadapt.load_recipe(speech_recipe({}, name="base")), progress=False)
    result = mmadapt.run(mmadapt.load_recipe(speech_recipe(strategies, name="tuned")), progress=False)
    trained = result.manifest["parts"]["adapter" if "adapter" in strategies else "full"]
    assert trained["steps"] == 6 and trained["trainable_params"] > 0
    assert (result.version_dir / part_file).is_file()
    assert not list(result.version_dir.rglob("*.bin")) and not list(result.version_dir.rglob("*.pt"))
    assert result.manifest["costs"]["train_seconds"] > 0

    outputs = [p.output for p in result.evaluation.predictions]
    assert outputs != [p.output for p in base.evaluation.predictions], "training changed the transcripts"
    inputs = [e.input for e in get_modality("speech").load_data(result.recipe).eval]
    assert _reload_in_new_process(result.version_dir, inputs) == outputs


def test_lora_loss_falls_on_the_train_clips(speech_recipe):
    def final_loss(steps: int) -> dict:
        recipe = mmadapt.load_recipe(
            speech_recipe({"adapter": {"r": 8, "alpha": 16}}, name=f"s{steps}", train={"steps": steps, "lr": 3.0e-2})
        )
        return mmadapt.run(recipe, progress=False).manifest

    first, trained = final_loss(1), final_loss(30)  # a 1-step run's loss is the loss before any update
    assert trained["parts"]["adapter"]["final_loss"] < 0.8 * first["parts"]["adapter"]["final_loss"]
    assert trained["parts"]["adapter"]["trainable_params"] < trained["base_model"]["parameters"] / 2


# ---------------------------------------------------------------- resume


class Interrupted(Exception):
    pass


def test_interrupted_lora_run_resumes_to_the_uninterrupted_result(speech_recipe, monkeypatch):
    straight = mmadapt.run(mmadapt.load_recipe(speech_recipe({"adapter": {"r": 4, "alpha": 8}}, name="straight")), progress=False)

    path = speech_recipe({"adapter": {"r": 4, "alpha": 8}}, name="killed")
    real_save = trainer.save_checkpoint

    def save_then_die(folder, model, optimizer, step, losses):
        real_save(folder, model, optimizer, step, losses)
        if step == 3:
            raise Interrupted  # after the first checkpoint, half-way through the 6 steps

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        mmadapt.run(mmadapt.load_recipe(path), progress=False)
    assert not list((Path(straight.recipe.output_dir) / "killed").glob("v0*")), "an interrupted run publishes nothing"
    saved = []

    def save_and_count(folder, model, optimizer, step, losses):
        saved.append(step)
        real_save(folder, model, optimizer, step, losses)

    monkeypatch.setattr(trainer, "save_checkpoint", save_and_count)
    resumed = mmadapt.run(mmadapt.load_recipe(path), resume=True, progress=False)
    assert saved == [6], "the resumed run went on from step 3, not from the start"
    assert resumed.manifest["parts"]["adapter"]["final_loss"] == pytest.approx(
        straight.manifest["parts"]["adapter"]["final_loss"], abs=1e-5
    )
    assert [p.output for p in resumed.evaluation.predictions] == [p.output for p in straight.evaluation.predictions]


# ---------------------------------------------------------------- batched decoding


def test_batched_mixed_prompt_greedy_equals_generate_row_by_row(speech_recipe):
    """One batch with a different prompt per row decodes each row exactly as generate() does alone."""
    import torch

    from mmadapt.modalities.speech.predict import Windows, greedy_decode

    recipe, _m, stack, data = _stack(speech_recipe({}, inference={"max_new_tokens": 12, "batch_size": 4}))
    stack.prompt_template = "Glossary: {terms}."
    paths = [e.input for e in data.train[:4]]
    windows = Windows(stack, paths)
    batch = windows.batches[0]
    states = windows.encode(batch)
    term_sets = [None, ["Zentrix"], ["Kubelyn", "QPX-9", "flarn cache"], ["Vextora"]]
    prompts = [prompt_token_ids(stack, t) for t in term_sets]
    special = special_ids(stack.processor.tokenizer)
    prefixes = [[*(p or []), special["sot"], special["notimestamps"]] for p in prompts]
    mixed = greedy_decode(stack.model, states, prefixes, [12] * len(batch))
    assert any(mixed), "the tiny model says something"
    for row, n in enumerate(batch):
        feats = stack.processor.feature_extractor(windows.items[n][1], sampling_rate=16000, return_tensors="pt").input_features
        kwargs = {"prompt_ids": torch.tensor(prompts[row])} if prompts[row] else {}
        out = stack.model.generate(input_features=feats, max_new_tokens=12, **kwargs).tolist()[0]
        cut = (
            max(i for i, t in enumerate(out) if t in (special["sot"], special["notimestamps"]))
            if special["notimestamps"] in out
            else -1
        )
        expected = [t for t in out[cut + 1 :] if t != special["eot"]]
        assert mixed[row] == expected, (row, term_sets[row])


def test_retrieval_training_sequences_cover_both_passes(speech_recipe, tmp_path):
    """With retrieval in the stack each train clip gives a prompt-less sequence (the first pass) and
    one prompted with its own terms among distractors (the second pass); the loss is on the transcript."""
    from mmadapt.modalities.speech.tuning import IGNORE, encode_examples

    recipe, modality, stack, data = _stack(speech_recipe({"retrieval": {"top_k": 4}}))
    part = tmp_path / "retrieval"
    part.mkdir()
    strategy = modality.strategies["retrieval"](recipe.strategies["retrieval"], recipe)
    strategy.fit(stack, data, part, FitContext(recipe, tmp_path / "work", progress=False))
    strategy.compose(stack, part)
    encoded = encode_examples(stack, data, seed=0)
    tok = stack.processor.tokenizer
    special = special_ids(tok)
    assert [source for *_x, source in encoded] == [i for i in range(len(data.train)) for _ in range(2)]
    for k, example in enumerate(data.train):
        (plain, plain_y, _), (prompted, prompted_y, _) = encoded[2 * k], encoded[2 * k + 1]
        assert plain[0] == special["sot"] and prompted[0] == special["prev"]
        prompt = tok.decode(prompted[1 : prompted.index(special["sot"])])
        assert all(term in prompt for term in example.meta["terms"]), (prompt, example.meta["terms"])
        for y in (plain_y, prompted_y):
            said = [t for t in y if t != IGNORE]
            assert tok.decode(said[:-1]).strip() == example.reference and said[-1] == special["eot"]


def test_beam_search_goes_through_generate_with_each_rows_prompt(speech_recipe):
    import torch

    from mmadapt.modalities.speech.predict import Windows

    recipe, _m, stack, data = _stack(speech_recipe({}, inference={"max_new_tokens": 10, "batch_size": 3, "num_beams": 2}))
    stack.prompt_template = "Glossary: {terms}."
    windows = Windows(stack, [e.input for e in data.train[:3]])
    batch = windows.batches[0]
    prompts = [None, prompt_token_ids(stack, ["Zentrix"]), prompt_token_ids(stack, ["Zentrix"])]
    texts = windows.decode(windows.encode(batch), batch, prompts)
    for row, n in enumerate(batch):
        feats = stack.processor.feature_extractor(windows.items[n][1], sampling_rate=16000, return_tensors="pt").input_features
        kwargs = {"prompt_ids": torch.tensor(prompts[row])} if prompts[row] else {}
        out = stack.model.generate(input_features=feats, max_new_tokens=windows.limit(n), num_beams=2, **kwargs).tolist()[0]
        special = special_ids(stack.processor.tokenizer)
        if special["notimestamps"] in out:
            out = out[max(i for i, t in enumerate(out) if t in (special["sot"], special["notimestamps"])) + 1 :]
        expected = stack.processor.tokenizer.decode([t for t in out if t != special["eot"]], skip_special_tokens=True).strip()
        assert texts[row] == expected, row

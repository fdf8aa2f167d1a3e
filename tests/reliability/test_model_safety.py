"""Model loading safety: safetensors only unless pickles are trusted for the process
(``mmadapt run --trust-remote-pickle`` / ``MMADAPT_TRUST_REMOTE_PICKLE=1``); ``trust_remote_code``
only when the recipe sets it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mmadapt.cli import main
from mmadapt.engine.artifact import versions
from mmadapt.errors import ModelError
from mmadapt.modalities.text.model import load_causal_lm
from mmadapt.models.resolve import TRUST_PICKLE_ENV, check_safetensors_only, pickle_trusted


@pytest.fixture
def no_trust(monkeypatch):
    """The switch is off, and whatever a test sets is undone afterwards."""
    monkeypatch.setenv(TRUST_PICKLE_ENV, "0")
    return monkeypatch


@pytest.fixture
def pickle_lm(tmp_path, tiny_lm) -> Path:
    """The tiny LM with its weights as a pickle (pytorch_model.bin) and no safetensors."""
    folder = tmp_path / "pickle-lm"
    shutil.copytree(tiny_lm, folder)
    weights = load_file(str(folder / "model.safetensors"))
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture
def remote_code_lm(tmp_path, tiny_lm) -> Path:
    """The tiny LM declared as a custom architecture whose classes live in the folder's own .py files."""
    folder = tmp_path / "remote-lm"
    shutil.copytree(tiny_lm, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="mmadapt_remote_llama",
        architectures=["RemoteForCausalLM"],
        auto_map={"AutoConfig": "configuration_remote.RemoteConfig", "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_remote.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass RemoteConfig(LlamaConfig):\n    model_type = 'mmadapt_remote_llama'\n"
    )
    (folder / "modeling_remote.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteForCausalLM(LlamaForCausalLM):\n    config_class = RemoteConfig\n"
    )
    return folder


def test_switch_reads_the_environment(no_trust):
    assert pickle_trusted() is False and pickle_trusted(True) is True
    no_trust.setenv(TRUST_PICKLE_ENV, "1")
    assert pickle_trusted() is True and pickle_trusted(False) is False


def test_pickle_only_model_refused_then_loaded_when_trusted(pickle_lm, tiny_lm, no_trust):
    with pytest.raises(ModelError, match="weights are pickle files .pytorch_model.bin.; mmadapt loads safetensors only") as err:
        load_causal_lm(str(pickle_lm))
    assert "--trust-remote-pickle" in str(err.value) and "\n" not in str(err.value)
    model, _, _ = load_causal_lm(str(pickle_lm), allow_pickle=True)
    reference = load_file(str(Path(tiny_lm) / "model.safetensors"))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items() if k in loaded)
    no_trust.setenv(TRUST_PICKLE_ENV, "1")
    check_safetensors_only(str(pickle_lm))  # the process-wide switch, no argument
    assert load_causal_lm(str(pickle_lm))[2]["parameters"] == sum(p.numel() for p in model.parameters())


def test_cli_flag(pickle_lm, make_recipe, write_recipe, tmp_path, no_trust):
    raw = make_recipe(str(pickle_lm), strategies={"prompt": {}}, output_dir=str(tmp_path / "runs"), inference={"max_new_tokens": 2})
    path = write_recipe(raw)
    refused = CliRunner().invoke(main, ["run", str(path), "--quiet"])
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    assert [line for line in refused.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {pickle_lm}: weights are pickle files (pytorch_model.bin); mmadapt loads safetensors only — fix: convert the "
        "checkpoint to safetensors, or pass --trust-remote-pickle if you trust its source"
    ]
    assert not (tmp_path / "runs" / "tiny-text").exists() or versions(tmp_path / "runs" / "tiny-text") == []
    trusted = CliRunner().invoke(main, ["run", str(path), "--quiet", "--trust-remote-pickle"])
    assert trusted.exit_code == 0, trusted.output
    assert versions(tmp_path / "runs" / "tiny-text") == ["v0001"]


def test_trust_remote_code_only_when_the_recipe_sets_it(remote_code_lm, make_recipe, write_recipe, tmp_path, no_trust):
    with pytest.raises(ModelError, match="needs its own Python code to load .trust_remote_code is off.") as err:
        load_causal_lm(str(remote_code_lm))  # the default: the folder's .py files never run
    assert "\n" not in str(err.value) and "set trust_remote_code: true in the recipe" in str(err.value)
    model, _, _ = load_causal_lm(str(remote_code_lm), trust_remote_code=True)
    assert type(model).__name__ == "RemoteForCausalLM"

    base = make_recipe(str(remote_code_lm), strategies={"prompt": {}}, output_dir=str(tmp_path / "runs"), inference={"max_new_tokens": 2})
    off = CliRunner().invoke(main, ["run", str(write_recipe(base, "off.yaml")), "--quiet"])
    assert off.exit_code == 2 and "Traceback" not in off.stderr
    errors = [line for line in off.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "trust_remote_code is off" in errors[0]
    on = CliRunner().invoke(main, ["run", str(write_recipe({**base, "trust_remote_code": True}, "on.yaml")), "--quiet"])
    assert on.exit_code == 0, on.output
    assert versions(tmp_path / "runs" / "tiny-text") == ["v0001"]

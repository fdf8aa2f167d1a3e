"""The saved image LoRA reloads whole: a mixed target list (attention + conv) keeps every tensor.

diffusers' ``convert_state_dict_to_diffusers`` renames only the attention keys of a peft state
dict; a file mixing ``to_q.lora.down`` with ``conv_in.lora_A`` lost every attention LoRA in
``load_lora_weights``. The trained LoRA (in memory, before the save) must equal the reloaded one.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

import mmadapt.modalities.image.adapter as adapter_module
from mmadapt.engine.runner import load_artifact, run
from mmadapt.recipe import load_recipe
from tests.image.test_image_strategies import PROMPTS, brand_subset, pixels, recipe_file, tiny_pipe  # noqa: F401 (fixtures)

MIXED = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_in", "proj_in"]


def lora_tensors(denoiser) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(denoiser, adapter_name=adapter_module.ADAPTER_NAME).items()}


@pytest.mark.slow
def test_a_mixed_target_lora_reloads_every_trained_tensor(tmp_path, tiny_pipe, brand_subset, monkeypatch):  # noqa: F811
    from mmadapt.protocols import get_modality

    trained: dict = {}
    real_train = adapter_module.train_denoiser

    def train_and_record(denoiser, stack, *args, **kwargs):  # the trained pipeline, before fit saves and unloads it
        report = real_train(denoiser, stack, *args, **kwargs)
        trained["lora"] = lora_tensors(denoiser)
        trained["image"] = get_modality("image").predictor(stack).predict([PROMPTS[0]])[0].output
        return report

    monkeypatch.setattr(adapter_module, "train_denoiser", train_and_record)
    adapter = {"r": 4, "alpha": 4, "scale": 1.0, "target_modules": MIXED}
    result = run(load_recipe(recipe_file(tmp_path, tiny_pipe, brand_subset, {"adapter": adapter})), progress=False)

    lora = trained["lora"]
    assert any(".attn1.to_q." in k for k in lora) and any(k.startswith("conv_in.") for k in lora)

    artifact = load_artifact(result.version_dir)  # a fresh load of the saved version
    reloaded = lora_tensors(artifact.stack.unet)
    assert set(reloaded) == set(lora)
    for key, value in lora.items():
        assert reloaded[key].equal(value), key
    image = artifact.predict([PROMPTS[0]])[0].output
    assert np.abs(pixels(image) - pixels(trained["image"])).max() <= 1

    weights = result.version_dir / "adapter" / "adapter" / adapter_module.WEIGHTS
    with safe_open(str(weights), "pt") as f:
        assert {k.removeprefix("unet.") for k in f.keys()} == set(lora)  # one key format: peft's, every tensor

    # a version saved before (diffusers' names for the attention keys only) loads as before, with one line
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file, save_file

    save_file(convert_state_dict_to_diffusers(load_file(str(weights))), str(weights), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="mixed key names") as caught:
        old = load_artifact(result.version_dir)
    assert len([w for w in caught if "mixed key names" in str(w.message)]) == 1
    assert {k for k in lora_tensors(old.stack.unet)} == {k for k in lora if ".attn" not in k}


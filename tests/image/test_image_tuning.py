"""The diffusion fine-tuning knobs (offset noise, Min-SNR weighting) against their definitions."""

import pytest
import torch
from diffusers import DDPMScheduler

from mmadapt.modalities.image.tuning import DiffusionTuning, min_snr_weights, offset_noise


def test_min_snr_weights_follow_the_paper():
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    snr = alphas[t] / (1 - alphas[t])
    eps = min_snr_weights(alphas, t, 5.0, "epsilon")
    # high-SNR (low-noise) steps are weighed down to gamma / SNR, low-SNR steps keep weight 1
    assert eps[0] == pytest.approx(5.0 / snr[0].item()) and eps[0] < 1e-2
    assert eps[-1] == pytest.approx(1.0) and eps[2] == pytest.approx(1.0)
    v = min_snr_weights(alphas, t, 5.0, "v_prediction")
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1))
    assert torch.allclose(min_snr_weights(alphas, t, 5.0, "sample"), torch.clamp(snr, max=5.0))
    assert torch.equal(min_snr_weights(alphas, t, None, "epsilon"), torch.ones(4))


def test_offset_noise_shifts_each_image_and_channel_mean():
    torch.manual_seed(0)
    plain = offset_noise(torch.Size([64, 4, 32, 32]), 0.0)
    torch.manual_seed(0)
    shifted = offset_noise(torch.Size([64, 4, 32, 32]), 0.5)
    assert plain.mean(dim=(2, 3)).std() < 0.05  # white noise: per-channel means ~ 1/32
    assert 0.4 < shifted.mean(dim=(2, 3)).std() < 0.6  # plus N(0, 0.5^2) per image and channel
    torch.testing.assert_close((shifted - plain).std(dim=(2, 3)), torch.zeros(64, 4))  # a constant per channel


def test_knobs_are_validated():
    with pytest.raises(ValueError):
        DiffusionTuning(noise_offset=-0.1)
    with pytest.raises(ValueError):
        DiffusionTuning(snr_gamma=0)
    assert DiffusionTuning().snr_gamma is None and DiffusionTuning().noise_offset == 0.0

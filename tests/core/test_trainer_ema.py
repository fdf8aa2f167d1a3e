"""train.ema: the loop ends on diffusers' EMAModel average of the trained weights, and --resume continues it."""

from __future__ import annotations

import pytest
import torch

from mmadapt.config import TrainConfig
from mmadapt.engine import trainer
from mmadapt.errors import MmadaptError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _run(tmp_path, *, steps, ema=True, resume=False, model=None, on_step=None, decay=0.9999):
    model = model or _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)

    def collate(indices):
        return (x[indices], y[indices]), len(indices)

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum()

    config = TrainConfig(steps=steps, lr=0.1, batch_size=4, warmup_steps=0, checkpoint_every=2, ema=ema, ema_decay=decay)
    trainer.train(model, lengths=[1] * 16, collate=collate, loss_fn=loss_fn, config=config,
                  checkpoint_dir=tmp_path, resume=resume, progress=False, on_step=on_step)
    return model


def test_ema_weights_equal_a_hand_computed_average_of_the_raw_steps(tmp_path):
    raw, model = [], _model()
    _run(tmp_path / "ema", steps=3, model=model, on_step=lambda step, loss: raw.append([p.detach().clone() for p in model.parameters()]))
    # on_step sees the raw weights after each optimizer step; compute the average by hand:
    # EMAModel's decay is 0 at step 1, then (1 + n) / (10 + n) for n = step - 1 (below the 0.9999 cap)
    average = raw[0]
    for n, params in enumerate(raw[1:], start=1):
        decay = (1 + n) / (10 + n)
        average = [decay * a + (1 - decay) * p for a, p in zip(average, params)]
    final = [p.detach().clone() for p in model.parameters()]
    for got, want, last in zip(final, average, raw[-1]):
        assert torch.allclose(got, want, atol=1e-7)
        assert not torch.allclose(got, last, atol=1e-4)  # the raw last step is not what is kept
    plain = _run(tmp_path / "plain", steps=3, ema=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), raw[-1]))


def test_a_resumed_run_continues_the_same_average(tmp_path):
    straight = _run(tmp_path / "a", steps=6)
    real_save = trainer.save_checkpoint

    def save_then_crash(folder, model, optimizer, step, losses, **kwargs):
        real_save(folder, model, optimizer, step, losses, **kwargs)
        if step == 4:
            raise KeyboardInterrupt

    trainer.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "b", steps=6)
    finally:
        trainer.save_checkpoint = real_save
    resumed = _run(tmp_path / "b", steps=6, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_resuming_an_ema_run_from_a_checkpoint_without_one_is_one_line(tmp_path):
    _run(tmp_path, steps=2, ema=False)
    with pytest.raises(MmadaptError, match="written without train.ema") as info:
        _run(tmp_path, steps=4, resume=True)
    assert "\n" not in str(info.value)

import os

import pytest

# The speech tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # pyproject.toml registers "slow"; registering again keeps this folder runnable on its own.
    config.addinivalue_line("markers", "slow: loads the embedded models or trains; still run in CI")


@pytest.fixture
def tone():
    """A function making a sine tone: tone(seconds, rate, freq=440, channels=1) -> (frames[, channels]) float32."""
    import numpy as np

    def make(seconds: float, rate: int, freq: float = 440.0, channels: int = 1):
        t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
        mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        return mono if channels == 1 else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)

    return make

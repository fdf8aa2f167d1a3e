import pytest


def pytest_configure(config):
    # pyproject.toml registers "slow"; registering again keeps this folder runnable on its own.
    config.addinivalue_line("markers", "slow: loads the embedded models or trains; still run in CI")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM folder (safetensors + tokenizer with a chat template), built once."""
    import torch

    from tests.fixtures.tiny import tiny_causal_lm

    torch.set_num_threads(1)
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))

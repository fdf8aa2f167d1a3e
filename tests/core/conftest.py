import pytest

from tests.fixtures.tiny import tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM folder (built in-process, no download)."""
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))

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


DATASET = __import__("pathlib").Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A tiny random Whisper folder (model + processor with an in-process tokenizer), built once."""
    import torch

    from tests.fixtures.tiny import tiny_whisper

    torch.set_num_threads(1)
    return tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


def copy_split(src: str, dst, n: int, start: int = 0) -> list[dict]:
    """Copy ``n`` clips of the shipped speech-domain split ``src`` (with their metadata) into ``dst``."""
    import json
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DATASET / src / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[start : start + n]
    for row in rows:
        shutil.copy(DATASET / src / row["file_name"], dst / row["file_name"])
    (dst / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def speech_recipe(tmp_path, tiny_whisper_dir):
    """speech_recipe(strategies, **top_level) -> a recipe file on the tiny Whisper: 6 train and 2 eval clips
    copied from datasets/speech-domain, the shipped 40-term vocabulary, fast eval settings."""
    import yaml

    copy_split("train", tmp_path / "data" / "train", 6)
    copy_split("eval", tmp_path / "data" / "eval", 2)

    def make(strategies: dict, name: str = "tiny-speech", **extra):
        raw = {
            "name": name,
            "modality": "speech",
            "base_model": str(tiny_whisper_dir),
            "data": {
                "train": str(tmp_path / "data" / "train"),
                "eval": str(tmp_path / "data" / "eval"),
                "vocabulary": str(DATASET / "vocabulary.txt"),
            },
            "strategies": strategies,
            "train": {"steps": 6, "lr": 1.0e-2, "batch_size": 3, "warmup_steps": 0, "checkpoint_every": 3, "seed": 0},
            "eval": {"bootstrap": 20, "latency_samples": 1},
            "inference": {"max_new_tokens": 8, "batch_size": 2},
            "output_dir": str(tmp_path / "runs"),
        }
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make

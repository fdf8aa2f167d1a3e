"""Serve tests: the toy 'spell' modality (no torch, milliseconds) with two versions for routing,
splits, limits, logs and the live registry; tests/serve/test_openai_client.py adds the tiny text,
speech and image models behind a real uvicorn server."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from mmadapt import protocols
from mmadapt.protocols import register_modality
from tests.fixtures.toy_modality import SpellModality


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server for ``app`` on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


@contextlib.contextmanager
def served_recipe(raw: dict, root: Path):
    """Run the recipe ``raw`` (a dict, written to ``root``) once and serve its version on a live server:
    yields {"app", "version", "client"} (the real ``openai`` client, no retries)."""
    import openai
    import yaml

    import mmadapt
    from mmadapt.serve.app import create_app

    (root / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    version = mmadapt.run(mmadapt.load_recipe(root / f"{raw['name']}.yaml"), progress=False).version_dir
    app = create_app([version.parent])
    with LiveServer(app) as server:
        yield {
            "app": app,
            "version": version,
            "client": openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0),
        }


@pytest.fixture
def spell_runs(tmp_path):
    """The spell modality registered; its recipe run twice: v0001 answers a word as is, v0002 adds '!'.
    Returns {"rdir": runs/spell, "recipe": path of the YAML}."""
    import mmadapt

    before = dict(protocols.MODALITIES)
    register_modality("spell", SpellModality)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"word": w, "spelling": w}) + "\n" for w in ("zeta", "kappa")))
    recipe = tmp_path / "spell.yaml"
    recipe.write_text(
        "name: spell\nmodality: spell\nbase_model: echo\ndata: {eval: eval.jsonl}\n"
        f"strategies: {{prompt: {{suffix: ''}}}}\noutput_dir: {tmp_path / 'runs'}\neval: {{bootstrap: 10, latency_samples: 1}}\n"
    )
    mmadapt.run(mmadapt.load_recipe(recipe), progress=False)
    mmadapt.run(mmadapt.load_recipe(recipe, ("strategies.prompt.suffix='!'",)), progress=False)
    yield {"rdir": tmp_path / "runs" / "spell", "recipe": recipe}
    protocols.MODALITIES.clear()
    protocols.MODALITIES.update(before)
    protocols._loaded.pop("spell", None)


def chat(word: str, model: str = "spell", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": word}], **extra}


def wait_for(predicate, timeout: float = 5.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


ROOT = Path(__file__).resolve().parents[2]

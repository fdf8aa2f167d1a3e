"""The real ``openai`` client against a real uvicorn server on 127.0.0.1 serving three tiny recipes
built in-process: a text one (chat, streaming), a speech one (a WAV written here) and an image one
(base64 PNGs). Each answer is what the version's own predictor gives for the same input."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.serve.conftest import ROOT, LiveServer

pytestmark = pytest.mark.slow  # three tiny models: built, run (evaluated) and served (~30 s together)

openai = pytest.importorskip("openai")
KEY = "sk-test-key"
QUESTION = "What port does the gateway listen on?"
SPEECH = ROOT / "datasets" / "speech-domain"
BRAND = ROOT / "datasets" / "brand-style"


def _run(raw: dict, folder: Path) -> Path:
    import mmadapt

    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return mmadapt.run(mmadapt.load_recipe(path), progress=False).version_dir


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm):
    """{"url", "app", "versions": {name: version_dir}} for tiny-text, tiny-speech and tiny-image served with KEY."""
    import torch

    from mmadapt.serve.app import create_app
    from tests.fixtures.tiny import tiny_diffusion_pipeline, tiny_whisper

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    runs = root / "runs"
    data = root / "data"
    # text: the Q/A pairs of tests/conftest.py
    from tests.conftest import EVAL, TRAIN, write_jsonl

    data.mkdir()
    write_jsonl(data / "train.jsonl", TRAIN)
    write_jsonl(data / "eval.jsonl", EVAL)
    text = _run({"name": "tiny-text", "modality": "text", "base_model": str(tiny_lm),
                 "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
                 "strategies": {"prompt": {"system": "Answer briefly."}}, "inference": {"max_new_tokens": 8},
                 "eval": {"bootstrap": 10, "latency_samples": 1}, "output_dir": str(runs)}, root)
    # speech: two shipped eval clips
    (data / "clips").mkdir()
    rows = [json.loads(line) for line in (SPEECH / "eval" / "metadata.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        shutil.copy(SPEECH / "eval" / row["file_name"], data / "clips" / row["file_name"])
    (data / "clips" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    speech = _run({"name": "tiny-speech", "modality": "speech", "base_model": str(tiny_whisper(root / "whisper")),
                   "data": {"eval": str(data / "clips")}, "strategies": {}, "inference": {"max_new_tokens": 8, "batch_size": 2},
                   "eval": {"bootstrap": 10, "latency_samples": 1}, "output_dir": str(runs)}, root)
    # image: the brand palette, three references, two prompts
    (data / "brand" / "images").mkdir(parents=True)
    captions = [json.loads(line) for line in (BRAND / "captions.jsonl").read_text().splitlines()[:3]]
    for line in captions:
        shutil.copy(BRAND / line["file_name"], data / "brand" / line["file_name"])
    (data / "brand" / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    (data / "brand" / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                                                          for i, p in enumerate(["two circles in a row", "a star"])))
    image = _run({"name": "tiny-image", "modality": "image", "base_model": str(tiny_diffusion_pipeline(root / "sd")),
                  "data": {"references": str(data / "brand" / "images"), "captions": str(data / "brand" / "captions.jsonl"),
                           "palette": str(BRAND / "palette.json"), "eval": str(data / "brand" / "prompts.jsonl")},
                  "strategies": {}, "inference": {"steps": 2, "batch_size": 2},
                  "eval": {"metrics": ["palette_adherence"], "bootstrap": 10, "latency_samples": 1}, "output_dir": str(runs)}, root)
    versions = {"tiny-text": text, "tiny-speech": speech, "tiny-image": image}
    app = create_app([v.parent for v in versions.values()], api_key=KEY)
    with LiveServer(app) as server:
        yield {"url": server.url, "app": app, "versions": versions, "root": root}


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0)


def _predict(served, name: str, inputs: list) -> list:
    return served["app"].state.pool.cached(served["versions"][name]).artifact.predictor.predict(inputs)


def test_chat_answers_with_the_versions_own_answer(served, client):
    raw = client.chat.completions.with_raw_response.create(model="tiny-text", messages=[{"role": "user", "content": QUESTION}])
    assert raw.headers["x-mmadapt-version"] == "tiny-text@v0001"
    completion = raw.parse()
    assert completion.model == "tiny-text@v0001"
    assert completion.choices[0].message.content == _predict(served, "tiny-text", [QUESTION])[0].output


def test_chat_streams_the_same_answer(served, client):
    stream = client.chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": QUESTION}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _predict(served, "tiny-text", [QUESTION])[0].output
    # the tiny random model does not say its end-of-turn token within max_new_tokens: OpenAI's "length"
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[0].model == "tiny-text@v0001"


def test_a_conversation_reaches_the_chat_template_whole(served, client, monkeypatch):
    from mmadapt.modalities.text import predict as text_predict

    rendered, real = [], text_predict.chat_texts

    def recording(stack, inputs):  # the real renderer; the prompts the model is given are kept
        texts, retrieved = real(stack, inputs)
        rendered.extend(texts)
        return texts, retrieved

    monkeypatch.setattr(text_predict, "chat_texts", recording)
    messages = [{"role": "system", "content": "You are the Zentrix desk."},
                {"role": "user", "content": "Hello there, desk."}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "I run the staging gateway."}, {"role": "assistant", "content": "Noted: staging."},
                {"role": "user", "content": QUESTION}]
    raw = client.chat.completions.with_raw_response.create(model="tiny-text", messages=messages)
    (prompt,) = rendered
    assert [prompt.index(m["content"]) for m in messages] == sorted(prompt.index(m["content"]) for m in messages)
    assert "Answer briefly." not in prompt  # the conversation's own system turn, as in a data file's conversation
    answer = raw.parse().choices[0].message.content
    single = client.chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": QUESTION}])
    assert "Answer briefly." in rendered[1] and "staging" not in rendered[1]  # one question: the recipe's prompt, as before
    monkeypatch.undo()
    assert answer == _predict(served, "tiny-text", [messages])[0].output  # what the version answers the conversation
    assert single.choices[0].message.content == _predict(served, "tiny-text", [QUESTION])[0].output
    logged = [json.loads(line) for line in (served["versions"]["tiny-text"].parent / "serve" / "requests.jsonl").read_text().splitlines()]
    entry = next(e for e in logged if e["id"] == raw.headers["x-request-id"])
    assert entry["input"]["messages"] == messages and entry["output"] == [answer]


def test_a_wav_is_transcribed_and_the_upload_removed(served, client, tmp_path):
    import numpy as np
    import soundfile as sf

    t = np.arange(16000 * 2) / 16000
    wav = tmp_path / "hello.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype("float32"), 16000)
    before = set(Path(tempfile.gettempdir()).glob("mmadapt-upload-*"))
    with open(wav, "rb") as handle:
        raw = client.audio.transcriptions.with_raw_response.create(model="tiny-speech", file=handle)
    assert raw.headers["x-mmadapt-version"] == "tiny-speech@v0001"
    assert raw.parse().text == _predict(served, "tiny-speech", [str(wav)])[0].output
    assert set(Path(tempfile.gettempdir()).glob("mmadapt-upload-*")) == before
    (line,) = [x for x in map(json.loads, (served["versions"]["tiny-speech"].parent / "serve" / "requests.jsonl").read_text().splitlines())]
    assert line["input"]["file"]["name"] == "hello.wav" and line["input"]["file"]["bytes"] == wav.stat().st_size


def test_an_undecodable_upload_is_400(served, client):
    with pytest.raises(openai.BadRequestError, match="not-audio.wav"):
        client.audio.transcriptions.create(model="tiny-speech", file=("not-audio.wav", b"this is not audio"))


def test_images_come_back_as_base64_pngs(served, client):
    from PIL import Image

    result = client.images.generate(model="tiny-image", prompt="two circles in a row", n=2, response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    expected = _predict(served, "tiny-image", ["two circles in a row"])[0].output
    assert len(images) == 2 and all(im.format == "PNG" and im.size == expected.size for im in images)
    assert list(images[0].convert("RGB").getdata()) == list(expected.convert("RGB").getdata())
    line = json.loads((served["versions"]["tiny-image"].parent / "serve" / "requests.jsonl").read_text().splitlines()[0])
    assert len(line["output"]) == 2 and all(Path(f).is_file() and Path(f).suffix == ".png" for f in line["output"])
    assert Path(line["output"][0]).parent.name == result.model_extra["mmadapt"]["id"]
    with pytest.raises(openai.BadRequestError, match="`n`"):
        client.images.generate(model="tiny-image", prompt="a star", n=50, response_format="b64_json")


def test_models_errors_and_the_key(served, client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny-text", "tiny-text@v0001", "tiny-speech", "tiny-speech@v0001", "tiny-image", "tiny-image@v0001"} <= ids
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="answers /v1/images/generations"):
        client.chat.completions.create(model="tiny-image", messages=[{"role": "user", "content": "hi"}])
    wrong = openai.OpenAI(base_url=served["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": "hi"}])


def test_the_command_serves_and_stops_cleanly_on_sigterm(served):
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.serve.conftest import free_port

    port = free_port()
    runs = served["versions"]["tiny-text"].parent.parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MMADAPT_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "mmadapt.cli", "serve", "tiny-text", "--output-dir", str(runs), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused-on-loopback", max_retries=0)
        answer = client.chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": QUESTION}])
        assert answer.model == "tiny-text@v0001"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in err, err[-2000:]
    assert "serving tiny-text@v0001 on http://127.0.0.1:" in err and "Traceback" not in err


def test_chat_honours_max_tokens_temperature_and_seed(served, client):
    from mmadapt.modalities.text.chat import TextRequest

    ask = {"model": "tiny-text", "messages": [{"role": "user", "content": QUESTION}]}
    full = client.chat.completions.create(**ask)  # the recipe's inference.max_new_tokens (8), greedy
    assert full.usage.completion_tokens > 2 and full.choices[0].message.content == _predict(served, "tiny-text", [QUESTION])[0].output
    short = client.chat.completions.create(**ask, max_tokens=2)
    assert short.usage.completion_tokens <= 2 and short.choices[0].finish_reason == "length"
    offline = _predict(served, "tiny-text", [TextRequest(QUESTION, max_new_tokens=2)])[0]
    assert (short.choices[0].message.content, short.usage.completion_tokens) == (offline.output, offline.info["completion_tokens"])
    greedy = [client.chat.completions.create(**ask, temperature=0).choices[0].message.content for _ in range(2)]
    assert greedy == [full.choices[0].message.content] * 2  # temperature 0: greedy, the offline answer
    sampled = client.chat.completions.create(**ask, temperature=1.5, seed=3, n=2)
    again = client.chat.completions.create(**ask, temperature=1.5, seed=3, n=2)
    answers = [c.message.content for c in sampled.choices]
    assert answers == [c.message.content for c in again.choices]  # a seed makes sampling reproducible, choice by choice
    assert answers[0] != answers[1] and full.choices[0].message.content not in answers
    offline = _predict(served, "tiny-text", [TextRequest(QUESTION, temperature=1.5, seed=3, choice=k) for k in (1, 0)])
    assert [p.output for p in offline] == answers[::-1]  # its own generator per answer: the batch does not matter
    for bad, message in (({"temperature": 2.5}, "`temperature` 2.5 is outside 0..2"), ({"max_tokens": 5000}, "`max_tokens` 5000"),
                         ({"top_p": -0.1}, "`top_p`"), ({"seed": "x"}, "`seed` must be an integer")):
        with pytest.raises(openai.BadRequestError, match=message) as info:
            client.chat.completions.create(**ask, extra_body=bad)
        assert info.value.status_code == 400


def test_images_honour_size(served, client):
    from PIL import Image

    result = client.images.generate(model="tiny-image", prompt="a star", size="32x64", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (32, 64)
    for size in ("30x30", "big", "4096x8"):
        with pytest.raises(openai.BadRequestError, match="`size`"):
            client.images.generate(model="tiny-image", prompt="a star", size=size, response_format="b64_json")


def test_requests_batched_together_keep_their_own_settings(served, client):
    from concurrent.futures import ThreadPoolExecutor

    from mmadapt.modalities.text.chat import TextRequest

    rows = [TextRequest(QUESTION, max_new_tokens=2), QUESTION, TextRequest(QUESTION, temperature=1.5, seed=3),
            TextRequest(QUESTION, temperature=0.8, top_p=0.5, seed=4)]
    def key(p):  # the tiny random model's greedy tokens decode to little text: the token counts tell answers apart
        return p.output, p.info["completion_tokens"], p.info["mean_logprob"]

    alone = [key(_predict(served, "tiny-text", [row])[0]) for row in rows]
    together = _predict(served, "tiny-text", rows)  # one predictor call, as the serve worker makes for waiting requests
    assert [key(p) for p in together] == alone and len(set(alone)) == 4
    asks = [{"max_tokens": 2}, {}, {"temperature": 1.5, "seed": 3}, {"temperature": 0.8, "top_p": 0.5, "seed": 4}] * 2

    def ask(extra):
        answer = client.chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": QUESTION}], **extra)
        return answer.choices[0].message.content, answer.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:  # at once: the version's worker batches whatever waits
        answers = list(pool.map(ask, asks))
    assert answers == [a[:2] for a in alone] * 2

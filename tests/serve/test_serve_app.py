"""The serve app in-process (fastapi's TestClient) on the toy 'spell' modality: what answers, the
version named in every answer, the OpenAI error shapes, the limits, the key, the logs and feedback."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mmadapt.engine.atomic import read_json_lines as read_lines
from mmadapt.errors import MmadaptError
from mmadapt.serve.app import check_host, create_app
from mmadapt.serve.wire import ServeLimits
from tests.serve.conftest import chat


@pytest.fixture
def client(spell_runs):
    with TestClient(create_app([spell_runs["rdir"]])) as c:
        yield c


def test_the_current_version_answers_and_is_named_everywhere(client):
    r = client.post("/v1/chat/completions", json=chat("zeta"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "zeta!"}
    assert r.headers["x-mmadapt-version"] == "spell@v0002" == body["model"] == body["mmadapt"]["version"]
    assert body["object"] == "chat.completion" and body["id"] == r.headers["x-request-id"] == body["mmadapt"]["id"]


def test_a_pinned_version_answers_for_recipe_at_version(client):
    r = client.post("/v1/chat/completions", json=chat("zeta", model="spell@v0001"))
    assert r.json()["choices"][0]["message"]["content"] == "zeta"
    assert r.headers["x-mmadapt-version"] == "spell@v0001"


def test_models_lists_each_recipe_and_its_versions(client):
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(data) == {"spell", "spell@v0001", "spell@v0002"}
    assert data["spell"]["mmadapt"]["current"] == "v0002" and data["spell"]["mmadapt"]["endpoint"] == "chat.completions"
    assert data["spell@v0002"]["mmadapt"]["current"] and not data["spell@v0001"]["mmadapt"]["current"]


@pytest.mark.parametrize("model", ["nope", "spell@v0009", "spell@latest", None])
def test_an_unknown_model_is_404_in_openai_shape(client, model):
    r = client.post("/v1/chat/completions", json=chat("zeta", model=model))
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.json()["error"]["code"] == "model_not_found"


def test_the_wrong_endpoint_for_the_modality_is_400(client):
    r = client.post("/v1/images/generations", json={"model": "spell", "prompt": "a star"})
    assert r.status_code == 400 and "answers /v1/chat/completions" in r.json()["error"]["message"]
    r = client.post("/v1/audio/transcriptions", data={"model": "spell"}, files={"file": ("a.wav", b"RIFF")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_endpoint"


@pytest.mark.parametrize(("extra", "words"), [({"max_tokens": 10**6}, "max_tokens"), ({"n": 99}, "`n`"), ({"n": "two"}, "integer"),
                                              ({"max_tokens": 0}, "outside 1..4096"), ({"temperature": 2.01}, "`temperature`"),
                                              ({"temperature": "hot"}, "must be a number"), ({"top_p": 1.5}, "`top_p`"),
                                              ({"seed": 1.5}, "`seed` must be an integer"), ({"temperature": True}, "number")])
def test_limits_on_tokens_and_n_are_400(client, extra, words):
    r = client.post("/v1/chat/completions", json=chat("zeta", **extra))
    assert r.status_code == 400 and words in r.json()["error"]["message"]


def test_a_long_prompt_is_400_and_an_oversized_body_413(spell_runs):
    app = create_app([spell_runs["rdir"]], limits=ServeLimits(max_body_bytes=4096, max_prompt_chars=100))
    with TestClient(app) as c:
        assert c.post("/v1/chat/completions", json=chat("z" * 101)).status_code == 400
        r = c.post("/v1/chat/completions", json=chat("z" * 5000))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        chunked = c.post("/v1/chat/completions", content=iter([b"{", b" " * 5000, b"}"]),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413  # no content-length: counted as it arrives
        assert c.post("/v1/chat/completions", json=chat("zeta")).status_code == 200


def test_bad_requests_are_400(client):
    assert client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    r = client.post("/v1/chat/completions", json={"model": "spell", "messages": [{"role": "system", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"


def test_the_key_is_required_when_asked(spell_runs):
    with TestClient(create_app([spell_runs["rdir"]], api_key="sesame", require_key=True)) as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "sesame"}):
            r = c.post("/v1/chat/completions", json=chat("zeta"), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/chat/completions", json=chat("zeta"), headers={"authorization": "Bearer sesame"})
        assert ok.status_code == 200
    with pytest.raises(MmadaptError, match="API key is required"):
        create_app([spell_runs["rdir"]], require_key=True)


@pytest.mark.parametrize(("host", "refused"), [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                                ("0.0.0.0", True), ("10.1.2.3", True), ("myhost", True)])
def test_serving_beyond_loopback_needs_a_key(host, refused):
    if refused:
        with pytest.raises(MmadaptError, match="not loopback"):
            check_host(host, None)
        check_host(host, "k")
    else:
        check_host(host, None)


def test_streaming_sends_data_chunks_and_done(client):
    with client.stream("POST", "/v1/chat/completions", json=chat("zeta", stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-mmadapt-version"] == "spell@v0002"
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "zeta!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and {c["model"] for c in chunks} == {"spell@v0002"}


def test_every_request_is_one_whole_log_line_and_feedback_finds_it(spell_runs):
    rdir = spell_runs["rdir"]
    with TestClient(create_app([rdir])) as c:
        ok = c.post("/v1/chat/completions", json=chat("zeta", user="ann")).json()
        c.post("/v1/chat/completions", json=chat("kappa", n=77))
        assert c.post("/v1/chat/completions", json=chat("x", model="ghost")).status_code == 404  # names no recipe: not logged
        fb = c.post("/v1/feedback", json={"id": ok["id"], "score": 1, "comment": "good"})
        assert fb.status_code == 200 and fb.json()["version"] == "v0002"
        assert c.post("/v1/feedback", json={"id": "req-nope", "score": 0}).status_code == 404
        assert c.post("/v1/feedback", json={"id": ok["id"], "score": "great"}).status_code == 400
    raw = (rdir / "serve" / "requests.jsonl").read_bytes()
    assert raw.endswith(b"\n") and len(raw.splitlines()) == 2
    first, second = read_lines(rdir / "serve" / "requests.jsonl")
    assert first["id"] == ok["id"] and first["version"] == "v0002" and first["user"] == "ann" and first["status"] == 200
    assert first["input"]["messages"][0]["content"] == "zeta" and first["output"] == ["zeta!"] and first["route"] == "current"
    assert first["latency_ms"] >= 0 and first["time"].endswith("Z")
    assert second["status"] == 400 and second["output"] is None and "`n`" in second["error"]
    (feedback,) = read_lines(rdir / "serve" / "feedback.jsonl")
    assert feedback == {"id": ok["id"], "time": feedback["time"], "recipe": "spell", "version": "v0002", "score": 1.0, "comment": "good"}


def test_feedback_finds_a_request_logged_before_a_restart(spell_runs):
    rdir = spell_runs["rdir"]
    with TestClient(create_app([rdir])) as c:
        rid = c.post("/v1/chat/completions", json=chat("zeta")).json()["id"]
    with TestClient(create_app([rdir])) as c:
        assert c.post("/v1/feedback", json={"id": rid, "score": 0.5}).status_code == 200


def test_redacted_inputs_keep_only_a_hash(spell_runs):
    rdir = spell_runs["rdir"]
    with TestClient(create_app([rdir], redact_inputs=True)) as c:
        c.post("/v1/chat/completions", json=chat("secret-word"))
    text = (rdir / "serve" / "requests.jsonl").read_text()
    (line,) = read_lines(rdir / "serve" / "requests.jsonl")
    assert "secret-word\"" not in text.replace("secret-word!", "") and line["input"] is None and len(line["input_sha256"]) == 64


def test_a_version_that_does_not_load_leaves_the_old_one_answering(spell_runs):
    import shutil

    from mmadapt.govern.registry import rollback

    rdir = spell_runs["rdir"]
    shutil.rmtree(rdir / "v0001" / "prompt")  # v0001 no longer loads
    with TestClient(create_app([rdir])) as c:
        r = c.post("/v1/chat/completions", json=chat("zeta", model="spell@v0001"))
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_unavailable"
        rollback(rdir, reason="test")  # current -> the broken v0001
        assert c.app.state.router.refresh() == []
        r = c.post("/v1/chat/completions", json=chat("zeta"))
        assert r.status_code == 200 and r.headers["x-mmadapt-version"] == "spell@v0002"
    assert [line["status"] for line in read_lines(rdir / "serve" / "requests.jsonl")] == [500, 200]


def test_a_broken_multipart_body_is_400_in_openai_shape(client):
    r = client.post("/v1/audio/transcriptions", content=b"--xyz\r\nnot a part",
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_nan_is_not_json(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "spell", "messages": [], "temperature": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]

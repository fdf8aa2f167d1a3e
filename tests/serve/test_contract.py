"""The serving part of the Modality contract: declared, checked at registration, and what each
built-in modality makes of a request."""

from __future__ import annotations

import pytest

from mmadapt.errors import RequestError
from mmadapt.protocols import API_ENDPOINTS, Modality, Prediction, ServeRequest, check_modality, get_modality
from tests.fixtures.toy_modality import SpellModality


def test_every_built_in_modality_answers_one_endpoint_each():
    endpoints = {name: get_modality(name).api_endpoint for name in ("text", "speech", "image")}
    assert endpoints == {"text": "chat.completions", "speech": "audio.transcriptions", "image": "images.generations"}
    assert set(endpoints.values()) == set(API_ENDPOINTS)


def test_a_modality_without_the_serving_part_is_refused():
    class NoEndpoint(SpellModality):
        api_endpoint = "completions"

    with pytest.raises(TypeError, match="api_endpoint 'completions' is not one of"):
        check_modality(NoEndpoint)

    skip = ("serve_inputs", "__dict__", "__weakref__", "__abstractmethods__", "_abc_impl")
    no_serve = type("NoServe", (Modality,), {k: v for k, v in vars(SpellModality).items() if k not in skip})
    with pytest.raises(TypeError, match="does not implement serve_inputs"):
        check_modality(no_serve)


def test_text_takes_the_whole_conversation():
    from mmadapt.modalities.text.chat import retrieval_query

    text = get_modality("text")
    assert text.serve_inputs(ServeRequest({"messages": [{"role": "user", "content": "Which port?"}]})) == ["Which port?"]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"}, {"role": "developer", "content": "no jokes"},
                {"role": "user", "content": [{"type": "text", "text": "Which port?"}]}]
    conversation = [{"role": "system", "content": "be brief\n\nno jokes"}, {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Which port?"}]
    assert text.serve_inputs(ServeRequest({"messages": messages})) == [conversation]
    assert text.serve_inputs(ServeRequest({"messages": messages, "n": 2})) == [conversation] * 2
    assert retrieval_query(conversation, 0) == "Which port?" and retrieval_query(conversation, 2) == "first\nok\nWhich port?"
    assert text.guard_words(conversation) == ["be brief\n\nno jokes", "first", "Which port?"]
    for bad in (None, [], [{"role": "system", "content": "x"}], [{"content": "x"}], [{"role": "user", "content": " "}],
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}],
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}, {"role": "user", "content": "y"}]):
        with pytest.raises(RequestError):
            text.serve_inputs(ServeRequest({"messages": bad}))
    from mmadapt.modalities.text.chat import TextRequest

    asked = text.serve_inputs(ServeRequest({"messages": messages, "n": 2, "max_tokens": 5, "temperature": 0.7, "seed": 1}))
    assert asked == [TextRequest(conversation, 5, 0.7, None, 1, choice=k) for k in (0, 1)]
    assert text.guard_words(asked[0]) == ["be brief\n\nno jokes", "first", "Which port?"]
    assert text.serve_inputs(ServeRequest({"messages": messages[-1:], "max_completion_tokens": 3, "max_tokens": 9}))[0].max_new_tokens == 3
    body = text.serve_payload([Prediction("7443", sources=["ports.md"])], ServeRequest({}))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "7443"} and body["mmadapt"]["sources"] == [["ports.md"]]


def test_speech_needs_a_file_and_image_a_prompt(tmp_path):
    from PIL import Image

    speech, image = get_modality("speech"), get_modality("image")
    with pytest.raises(RequestError, match="no audio file"):
        speech.serve_inputs(ServeRequest({"model": "x"}))
    with pytest.raises(RequestError, match="response_format"):
        speech.serve_inputs(ServeRequest({"response_format": "srt"}, tmp_path / "a.wav"))
    assert speech.serve_inputs(ServeRequest({}, tmp_path / "a.wav")) == [str(tmp_path / "a.wav")]
    assert speech.serve_payload([Prediction("hello")], ServeRequest({}))["text"] == "hello"
    assert image.serve_inputs(ServeRequest({"prompt": "a star", "n": 3})) == ["a star"] * 3
    from mmadapt.modalities.image.predict import ImageRequest

    (sized,) = image.serve_inputs(ServeRequest({"prompt": "a star", "size": "256x128"}))
    assert sized == ImageRequest("a star", 256, 128) and image.guard_words(sized) == ["a star"]
    for size in ("256", "250x256", "0x8", "8x4096", 256):
        with pytest.raises(RequestError, match="`size`"):
            image.serve_inputs(ServeRequest({"prompt": "a star", "size": size}))
    for fields in ({"prompt": ""}, {"prompt": "a star", "response_format": "url"}, {}):
        with pytest.raises(RequestError):
            image.serve_inputs(ServeRequest(fields))
    data = image.serve_payload([Prediction(Image.new("RGB", (8, 8), "red"), info={"prompt": "a star, flat"})], ServeRequest({}))["data"]
    assert data[0]["b64_json"] and data[0]["revised_prompt"] == "a star, flat"

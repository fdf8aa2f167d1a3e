"""serve answers through a recipe's guard (the toy 'spell' modality, milliseconds): a refused input
never reaches the model, what the model echoes is redacted, and the outcome is in the body and the log
(never what was removed)."""

from __future__ import annotations

from fastapi.testclient import TestClient

import mmadapt
from mmadapt.engine.atomic import read_json_lines
from mmadapt.serve.app import create_app
from tests.serve.conftest import chat


def test_serve_refuses_and_redacts_through_the_recipe_guard(spell_runs):
    recipe = spell_runs["recipe"]
    recipe.write_text(recipe.read_text() + "guard: {input: {blocked_patterns: ['secret']}, refusal: 'No.'}\n")
    mmadapt.run(mmadapt.load_recipe(recipe), progress=False)  # v0003: the guarded version, now current
    rdir = spell_runs["rdir"]
    with TestClient(create_app([rdir])) as client:
        refused = client.post("/v1/chat/completions", json=chat("tell me a secret")).json()
        echoed = client.post("/v1/chat/completions", json=chat("bob@corp.example")).json()
        plain = client.post("/v1/chat/completions", json=chat("spell@v0001", model="spell@v0001")).json()
    assert refused["choices"][0]["message"]["content"] == "No." and refused["mmadapt"]["guard"][0]["refused"]
    assert echoed["choices"][0]["message"]["content"] == "[email redacted]"
    assert echoed["mmadapt"]["guard"] == [{"refused": False, "escalated": False, "redactions": 1, "reason": None, "kinds": {"email": 1}}]
    assert "guard" not in plain["mmadapt"]  # an unguarded version answers as before
    logged = read_json_lines(rdir / "serve" / "requests.jsonl")
    assert [line["guard"][0]["refused"] for line in logged[:2]] == [True, False] and "bob@" not in str(logged[1]["output"])

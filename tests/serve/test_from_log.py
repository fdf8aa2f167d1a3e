"""`ab --from-log` and `drift --from-log`: live traffic of the serve app (toy 'spell' modality,
TestClient) joined with its feedback, then the same paired tests as `ab`; the served inputs as drift's
new inputs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mmadapt.cli.main import main as cli
from mmadapt.errors import MmadaptError
from mmadapt.govern.ab import ab_from_log
from mmadapt.govern.drift import detect, log_inputs
from mmadapt.govern.livelog import rated_requests
from mmadapt.recipe import load_recipe
from mmadapt.retrieval.embedders import SoundEmbedder
from mmadapt.serve.app import create_app
from tests.serve.conftest import chat


def _traffic(spell_runs, scores: dict[str, float], users: int = 40, words=("zeta", "kappa")) -> list[dict]:
    """``users`` requests through a 50/50 split, each rated by the version that answered (``scores``)."""
    app = create_app([spell_runs["rdir"]], split={"spell": {"v0001": 50, "v0002": 50}})
    answers = []
    with TestClient(app) as client:
        for n in range(users):
            body = client.post("/v1/chat/completions", json=chat(words[n % len(words)], user=f"u{n}")).json()
            version = body["mmadapt"]["version"].split("@")[1]
            score = scores[version] if n % 3 else 0.5  # every third answer is rated in the middle: ties
            assert client.post("/v1/feedback", json={"id": body["id"], "score": score}).status_code == 200
            answers.append({"id": body["id"], "version": version})
        client.post("/v1/feedback", json={"id": "req-unknown", "score": 1})  # 404: not logged
    return answers


def test_ab_from_log_pairs_live_feedback_in_time_order_and_finds_the_better_version(spell_runs):
    answers = _traffic(spell_runs, {"v0001": 0.0, "v0002": 1.0})
    recipe = load_recipe(spell_runs["recipe"])
    joined = rated_requests(spell_runs["rdir"])
    assert [r.id for r in joined.rated] == [a["id"] for a in answers]
    assert [r.version for r in joined.rated] == [a["version"] for a in answers]

    result = ab_from_log(recipe)  # the two versions with feedback; A = the current one (v0002)
    assert (result.a, result.b, result.source) == ("v0002", "v0001", "log")
    n_a = sum(a["version"] == "v0002" for a in answers)
    assert result.examples == min(n_a, len(answers) - n_a) and result.unpaired == abs(len(answers) - 2 * n_a)
    primary = result.primary
    assert primary.metric == "feedback" and primary.verdict == "worse" and primary.ci_high < 0
    assert [row["id_a"] for row in result.rows] == [a["id"] for a in answers if a["version"] == "v0002"][: result.examples]

    flipped = ab_from_log(recipe, "v0001", "v0002", method="sign")
    assert flipped.primary.verdict == "better" and flipped.primary.p_sign < 0.05 and flipped.primary.b_wins > 0

    out = CliRunner().invoke(cli, ["ab", str(spell_runs["recipe"]), "--from-log", "--a", "v0001", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["metrics"][0]["verdict"] == "better"


def test_ab_from_log_without_enough_feedback_is_one_line(spell_runs):
    recipe = load_recipe(spell_runs["recipe"])
    with pytest.raises(MmadaptError, match=r"feedback for 0 version\(s\).*--a vNNNN --b vNNNN"):
        ab_from_log(recipe)
    with pytest.raises(MmadaptError, match="at least 2 of each"):
        ab_from_log(recipe, "v0001", "v0002")
    out = CliRunner().invoke(cli, ["ab", str(spell_runs["recipe"])])
    assert out.exit_code == 2 and "--from-log" in out.output


def test_drift_from_log_reads_the_served_inputs_through_the_modality(spell_runs, tmp_path):
    words = ("zeta", "kappa", "sigma", "theta")
    _traffic(spell_runs, {"v0001": 0.0, "v0002": 1.0}, users=8, words=words)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"word": f"the {w}", "spelling": w}) + "\n" for w in ("alpha", "beta", "gamma", "delta", "eta", "iota", "mu", "nu", "xi", "pi")))
    recipe = load_recipe(spell_runs["recipe"], (f"data.train={train}",))
    texts = log_inputs(recipe)
    assert texts == [words[n % 4] for n in range(8)]  # answered requests only, oldest first

    # the drift statistics on those texts; an embedder without weights keeps this fast
    from mmadapt.protocols import get_modality

    modality = get_modality("spell")
    result = detect(modality.drift_texts(modality.load_data(recipe).train), texts, SoundEmbedder(), splits=10)
    oov = result.signal("oov_rate")  # train's held-out parts see "the" again; none of the served words
    assert result.n_new == 8 and oov.value == 1.0 and oov.threshold < 1.0 and oov.drifted


def test_drift_from_log_with_nothing_logged_or_redacted_says_why(spell_runs):
    recipe = load_recipe(spell_runs["recipe"])
    with pytest.raises(MmadaptError, match="no answered request is logged"):
        log_inputs(recipe)
    with TestClient(create_app([spell_runs["rdir"]], redact_inputs=True)) as client:
        client.post("/v1/chat/completions", json=chat("zeta"))
    with pytest.raises(MmadaptError, match="1 answered requests were logged with --redact-inputs"):
        log_inputs(recipe)
    out = CliRunner().invoke(cli, ["drift", str(spell_runs["recipe"])])
    assert out.exit_code == 2 and "--inputs PATH or --from-log" in out.output

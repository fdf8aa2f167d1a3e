"""The A/B split: shares by weight across 200 users, sticky per user, validated at start in one line."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mmadapt.cli import main
from mmadapt.engine.atomic import read_json_lines as read_lines
from mmadapt.errors import MmadaptError
from mmadapt.serve.app import create_app
from mmadapt.serve.split import Split, parse_split
from tests.serve.conftest import chat


def test_parse_split():
    assert parse_split(["a=v0001:90,v0002:10", "b=v0003:1"]) == {"a": {"v0001": 90.0, "v0002": 10.0}, "b": {"v0003": 1.0}}
    for bad in ("a", "a=", "a=v0001", "a=v0001:x", "=v0001:1"):
        with pytest.raises(MmadaptError, match="--split"):
            parse_split([bad])


def test_200_users_share_by_weight_and_each_keeps_their_version(spell_runs):
    app = create_app([spell_runs["rdir"]], split={"spell": {"v0001": 90, "v0002": 10}})
    first: dict[str, str] = {}
    with TestClient(app) as c:
        for i in range(200):
            r = c.post("/v1/chat/completions", json=chat("zeta", user=f"user-{i}"))
            assert r.status_code == 200
            first[f"user-{i}"] = r.headers["x-mmadapt-version"]
        counts = Counter(first.values())
        assert 200 * 0.9 - 15 <= counts["spell@v0001"] <= 200 * 0.9 + 15 and counts["spell@v0002"] >= 5, counts
        for i in range(0, 200, 7):  # sticky: again, and through the x-user header
            user = f"user-{i}"
            assert c.post("/v1/chat/completions", json=chat("kappa", user=user)).headers["x-mmadapt-version"] == first[user]
            assert c.post("/v1/chat/completions", json=chat("kappa"), headers={"x-user": user}).headers["x-mmadapt-version"] == first[user]
        pinned = c.post("/v1/chat/completions", json=chat("zeta", model="spell@v0002", user="user-0"))
        assert pinned.headers["x-mmadapt-version"] == "spell@v0002"  # a pinned version bypasses the split
        listed = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert listed["spell"]["mmadapt"]["split"] == {"v0001": 90.0, "v0002": 10.0}
    lines = read_lines(spell_runs["rdir"] / "serve" / "requests.jsonl")
    assert {line["route"] for line in lines} == {"split", "pinned"}


def test_without_a_user_the_draw_is_random_but_seeded():
    a, b = Split("r", {"a": 50, "b": 50}, seed=7), Split("r", {"a": 50, "b": 50}, seed=7)
    seq_a, seq_b = [a.choose(None) for _ in range(50)], [b.choose(None) for _ in range(50)]
    assert seq_a == seq_b and set(seq_a) == {"a", "b"}
    assert {Split("r", {"a": 0, "b": 3}).choose(f"u{i}") for i in range(50)} == {"b"}


@pytest.mark.parametrize(("split", "words"), [
    ({"ghost": {"v0001": 1}}, "not served"),
    ({"spell": {"v0009": 1}}, "no version 'v0009'"),
    ({"spell": {"v0001": 0, "v0002": 0}}, "sum to 0"),
    ({"spell": {"v0001": -1, "v0002": 2}}, "negative"),
    ({"spell": {}}, "no versions"),
])
def test_a_bad_split_is_refused_at_start(spell_runs, split, words):
    with pytest.raises(MmadaptError, match=words) as info:
        create_app([spell_runs["rdir"]], split=split)
    assert "\n" not in str(info.value)


def test_the_command_refuses_in_one_line(spell_runs):
    runs = str(spell_runs["rdir"].parent)
    for args, words in ((["--split", "spell=v0009:1"], "no version"), (["--host", "0.0.0.0"], "not loopback"),
                        (["--split", "spell"], "RECIPE=VERSION")):
        out = CliRunner().invoke(main, ["serve", "spell", "--output-dir", runs, *args])
        assert out.exit_code == 2 and words in out.output and len(out.output.strip().splitlines()) == 1, out.output
    out = CliRunner().invoke(main, ["serve", "nothing-here", "--output-dir", runs])
    assert out.exit_code == 2 and "has no version to serve" in out.output, out.output

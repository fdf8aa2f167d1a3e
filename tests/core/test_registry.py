"""Registry: list, show, diff and rollback through the API and the CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine.artifact import ArtifactWriter
from mmadapt.errors import ArtifactError
from mmadapt.govern.registry import current_version, diff, list_versions, read_audit, rollback, show


def _version(out, steps, accuracy, fingerprint):
    with ArtifactWriter(out, "demo") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        return writer.commit(
            {
                "stack": ["prompt", "retrieval"],
                "created": f"2026-11-22T10:0{steps % 10}:00+00:00",
                "recipe": {"name": "demo", "train": {"steps": steps}, "eval": {}},
                "recipe_hash": f"{steps:064d}",
                "data": {"fingerprint": fingerprint},
                "metrics": {"fact_accuracy": accuracy},
            }
        )


@pytest.fixture
def three_versions(tmp_path):
    for steps, accuracy, fp in [(10, 0.25, "aaa"), (20, 0.5, "aaa"), (30, 0.75, "bbb")]:
        _version(tmp_path, steps, accuracy, fp)
    return tmp_path / "demo"


def test_list_show_diff(three_versions):
    rows = list_versions(three_versions)
    assert [r["version"] for r in rows] == ["v0001", "v0002", "v0003"]
    assert [r["current"] for r in rows] == [False, False, True]
    assert rows[0]["metrics"] == {"fact_accuracy": 0.25} and rows[0]["stack"] == "prompt+retrieval"
    assert show(three_versions)["version"] == "v0003"
    assert show(three_versions, "v0001")["metrics"]["fact_accuracy"] == 0.25
    d = diff(three_versions, "v0001", "v0003")
    assert d["recipe"] == {"train.steps": (10, 30)}
    assert d["data"] == ("aaa", "bbb")
    assert d["metrics"] == {"fact_accuracy": (0.25, 0.75)}
    assert diff(three_versions, "v0001", "v0002")["data"] == ("aaa", "aaa")


def test_show_unknown_version_lists_the_known_ones(three_versions, tmp_path):
    with pytest.raises(ArtifactError, match="pick one of: v0001, v0002, v0003"):
        show(three_versions, "v0009")
    with pytest.raises(ArtifactError, match="no runs of this recipe yet"):
        show(tmp_path / "nothing")


def test_rollback_steps_back_then_refuses_at_the_oldest(three_versions):
    assert rollback(three_versions) == "v0002"
    assert current_version(three_versions) == "v0002"
    assert rollback(three_versions, reason="bad prices") == "v0001"
    with pytest.raises(ArtifactError, match="v0001 is the oldest version; nothing to roll back to"):
        rollback(three_versions)
    assert current_version(three_versions) == "v0001"
    assert rollback(three_versions, "v0003") == "v0003"  # forward again, explicitly
    rollbacks = [e for e in read_audit(three_versions) if e["what"] == "rollback"]
    assert [e["version"] for e in rollbacks] == ["v0002", "v0001", "v0003"]
    assert rollbacks[1]["why"] == "bad prices"
    with pytest.raises(ArtifactError, match="no version 'v0042'"):
        rollback(three_versions, "v0042")


def test_rollback_without_versions(tmp_path):
    with pytest.raises(ArtifactError, match="no versions to roll back to"):
        rollback(tmp_path / "demo")


def _cli(*args):
    return CliRunner().invoke(main, ["registry", *args])


def test_registry_cli(three_versions, tmp_path):
    out = str(tmp_path)
    listed = _cli("list", "demo", "--output-dir", out)
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "v000" in line]
    assert len(lines) == 3 and lines[2].lstrip().startswith("*") and "0.75" in lines[2]

    shown = _cli("show", "demo", "v0002", "--output-dir", out)
    assert shown.exit_code == 0 and '"version": "v0002"' in shown.output

    diffed = _cli("diff", "demo", "v0001", "v0003", "--output-dir", out)
    assert diffed.exit_code == 0
    assert "recipe train.steps: 10 -> 30" in diffed.output and "fact_accuracy: 0.25 -> 0.75" in diffed.output
    assert "data: aaa -> bbb" in diffed.output

    assert _cli("rollback", "demo", "--output-dir", out).output.strip() == "current: v0002"
    assert _cli("rollback", "demo", "--to", "v0001", "--output-dir", out).output.strip() == "current: v0001"
    oldest = _cli("rollback", "demo", "--output-dir", out)
    assert oldest.exit_code == 2
    assert oldest.output.strip().count("\n") == 0 and "Traceback" not in oldest.output
    assert "v0001 is the oldest version; nothing to roll back to" in oldest.output
    assert current_version(three_versions) == "v0001"


def test_registry_cli_errors_are_one_line(tmp_path):
    for args in (["list", "none", "--output-dir", str(tmp_path)], ["show", "none", "--output-dir", str(tmp_path)],
                 ["rollback", "none", "--output-dir", str(tmp_path)]):
        result = _cli(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and result.output.strip().count("\n") == 0

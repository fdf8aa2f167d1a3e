"""compare: the paired difference of each stack to the base over the same eval examples."""

from __future__ import annotations

import json
from pathlib import Path

from mmadapt.govern.compare import paired_rows, paired_vs_base


def _version(folder: Path, scores: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": f"e{i}", "m": s}) for i, s in enumerate(scores)]
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_paired_difference_to_base(tmp_path):
    base = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3]
    better = [b + 0.05 for b in base]  # a consistent small gain: the per-stack CIs overlap, the paired one does not
    same = list(base)
    rows = [
        {"stack": s, "m": sum(v) / len(v), "m_ci": [0, 1]} for s, v in (("base", base), ("adapter", better), ("prompt", same))
    ]
    dirs = [_version(tmp_path / r["stack"], v) for r, v in zip(rows, (base, better, same))]
    paired_vs_base(rows, dirs)
    assert "m_vs_base" not in rows[0]
    gain = rows[1]["m_vs_base"]
    assert abs(gain["diff"] - 0.05) < 1e-9 and gain["ci_low"] > 0.049 and gain["p_value"] == 0.0
    assert rows[2]["m_vs_base"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": 6, "of": 6}
    shown, columns = paired_rows(rows)
    assert columns == ["stack", "Δ m"] and [r["stack"] for r in shown] == ["adapter", "prompt"]
    assert shown[0]["Δ m"].startswith("+0.050 [+0.05, +0.05]")


def test_a_paired_test_on_some_clips_says_how_many(tmp_path):
    rows = [{"stack": "base", "m": 0.5, "m_ci": [0, 1]}, {"stack": "prompt", "m": 0.5, "m_ci": [0, 1]}]
    base = _version(tmp_path / "base", [0.1, 0.5, 0.2])
    other = tmp_path / "prompt"
    other.mkdir()
    (other / "predictions.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "m": v}) + "\n" for i, v in enumerate([0.2, None, 0.3])))
    paired_vs_base(rows, [base, other])
    assert rows[1]["m_vs_base"]["n"] == 2 and paired_rows(rows)[0][0]["Δ m"].endswith("n=2/3")


def test_no_base_row_no_paired_columns(tmp_path):
    rows = [{"stack": "prompt", "m": 0.2, "m_ci": [0, 1]}]
    paired_vs_base(rows, [_version(tmp_path / "p", [0.2, 0.2])])
    assert paired_rows(rows) == ([], [])

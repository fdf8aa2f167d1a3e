"""report.table: numbers right-aligned, text left-aligned (models list, compare, registry list, costs)."""

from __future__ import annotations

from mmadapt.govern.report import human_bytes, is_numeric, table


def _body(text: str) -> list[str]:
    return text.splitlines()[2:]


def test_text_columns_are_left_aligned():
    rows = [
        {"alias": "embedded:smollm2-135m-instruct", "modality": "text", "installed": "yes", "what": "a causal LM"},
        {"alias": "embedded:minilm-l6", "modality": "retrieval", "installed": "no: pip install x", "what": "an embedder"},
    ]
    lines = _body(table(rows, ["alias", "modality", "installed", "what"]))
    assert lines == [
        "embedded:smollm2-135m-instruct  text       yes                a causal LM",
        "embedded:minilm-l6              retrieval  no: pip install x  an embedder",
    ]


def test_numbers_and_formatted_figures_are_right_aligned_and_missing_follows_them():
    rows = [
        {"stack": "base", "fact_accuracy": "0.250 [0.10, 0.40]", "train_seconds": None, "artifact_bytes": human_bytes(1234567)},
        {"stack": "prompt+adapter", "fact_accuracy": "0.812 [0.70, 0.90]", "train_seconds": 61.2, "artifact_bytes": "12 B"},
    ]
    lines = _body(table(rows, ["stack", "fact_accuracy", "train_seconds", "artifact_bytes"]))
    assert lines[0] == "base            0.250 [0.10, 0.40]              -         1.2 MiB"
    assert lines[1] == "prompt+adapter  0.812 [0.70, 0.90]           61.2            12 B"


def test_a_mixed_column_aligns_cell_by_cell():
    rows = [{"cost": "train_seconds", "value": 0.0}, {"cost": "artifact_bytes", "value": "40.0 KiB"}, {"cost": "device", "value": "cpu"}]
    lines = _body(table(rows, ["cost", "value"]))
    assert lines == ["train_seconds      0.000", "artifact_bytes  40.0 KiB", "device          cpu     "]


def test_what_counts_as_a_number():
    numbers = [3, 0.5, float("nan"), "1,234", "-3", "+0.050 [-0.02, +0.10] p=0.012", "95%", "1e-05", "1.2 MiB", "7443"]
    text = [True, None, "yes", "v0001", "2024-05-01T10:00:00", "3 examples", "", "-", "prompt+adapter"]
    assert all(is_numeric(v) for v in numbers)
    assert not any(is_numeric(v) for v in text)


def test_markdown_tables_are_unchanged():
    assert table([{"a": "x", "b": 1}], ["a", "b"], markdown=True) == "| a | b |\n|---|---|\n| x | 1 |"

"""Plain-text tables for the terminal and Markdown reports."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# A string that shows a number: a figure (signed, with thousands commas, a decimal point or an exponent),
# then nothing, "%", a unit or what a table puts after a figure: "0.812 [0.70, 0.90]", "+0.050 [...] p=0.012",
# "1.2 MiB". Dates ("2024-05-01"), versions ("v0001") and words are text.
_NUMBER = re.compile(r"[+-]?(\d[\d,]*(\.\d*)?|\.\d+)([eE][+-]?\d+)?(%|\s+(\[.*|p=.*|[KMGT]?i?B|ms|s|h))?")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def is_numeric(value: Any) -> bool:
    """An int or a float (not a bool), or a string that shows one (a formatted figure)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and _NUMBER.fullmatch(value.strip()) is not None


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], markdown: bool = False) -> str:
    """Rows as an aligned text table (or a Markdown table).

    Numbers are right-aligned and text left-aligned, cell by cell; a missing value ("-") is
    right-aligned in a column that holds numbers. The first column (the row's label) is left-aligned.
    """
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if markdown:
        head = "| " + " | ".join(columns) + " |"
        sep = "|" + "|".join("---" for _ in columns) + "|"
        body = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([head, sep, *body])
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    numeric = [[is_numeric(r.get(c)) for c in columns] for r in rows]
    numbers_in = [any(flags[i] for flags in numeric) for i in range(len(columns))]
    right = [
        [i > 0 and (flags[i] or (row[i] == "-" and numbers_in[i])) for i in range(len(columns))]
        for row, flags in zip(cells, numeric)
    ]
    body = [
        "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, flags))
        for row, flags in zip(cells, right)
    ]
    return "\n".join([line, rule, *body])


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def ci_cell(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """A metric cell: 'value [lo, hi]' (its 95% CI), 'value' without one, '-' without a value."""
    if value is None:
        return "-"
    return f"{value:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{value:.3f}"


def slice_rows(slices: Mapping[str, Any], label: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """An evaluation's ``slices`` ({"by", "groups": value -> n, metrics, ci95}) as table rows: one per slice
    (after a ``stack`` cell when ``label`` is given), each metric 'value [lo, hi]'; and the columns."""
    groups = slices.get("groups") or {}
    metrics: list[str] = []
    for group in groups.values():
        metrics += [m for m in group["metrics"] if m not in metrics]
    rows = []
    for value, group in groups.items():
        row: dict[str, Any] = {} if label is None else {"stack": label}
        row[slices["by"]] = f"{value} (n={group['n']})"
        for m in metrics:
            lo, hi = (list(group.get("ci95", {}).get(m) or []) + [None, None])[:2]
            row[m] = ci_cell(group["metrics"].get(m), lo, hi)
        rows.append(row)
    return rows, [*([] if label is None else ["stack"]), slices["by"], *metrics]

"""Rows of results as Markdown tables and CSV: the one writer of each for the model card, the results tables
(`meta_xlm.tasks.tables`) and the analysis outputs (`meta_xlm.analysis.report`, `meta_xlm.analysis.runs`)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are written with str(), an empty cell as "| |"."""
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    lines += [markdown_row(row) for row in rows]
    return "\n".join(lines)


def markdown_row(cells: Sequence[object]) -> str:
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def columns_and_cells(rows: Sequence[Mapping]) -> tuple[list[str], list[list[object]]]:
    """(header, cells) of dict rows: the header is the first row's keys; every row has exactly those keys."""
    if not rows:
        raise ValueError("no rows to tabulate")
    header = list(rows[0])
    for index, row in enumerate(rows):
        if set(row) != set(header):
            raise ValueError(f"row {index} has the columns {sorted(row)}, expected those of row 0: {header}")
    return header, [[row[key] for key in header] for row in rows]


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV with a header line and "\\n" line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Dict rows to a CSV file whose columns are the rows' keys; no rows is an error naming the file."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    Path(path).write_text(csv_text(*columns_and_cells(rows)), encoding="utf-8", newline="")


__all__ = ["columns_and_cells", "csv_text", "markdown_table", "write_csv"]

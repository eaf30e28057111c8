"""The one Markdown-table and CSV writer: what the model card, the results tables and the reports render."""

import csv

import pytest

from meta_xlm.table_output import columns_and_cells, csv_text, markdown_table, write_csv


def test_markdown_table_renders_cells_and_empty_cells():
    table = markdown_table(["model", "te", "avg"], [["**Within**", "", ""], ["JointPair", 80.0, "80.0 †"]])
    assert table.splitlines() == [
        "| model | te | avg |",
        "|---|---|---|",
        "| **Within** | | |",
        "| JointPair | 80.0 | 80.0 † |",
    ]


def test_dict_rows_round_trip_through_csv_in_the_first_rows_column_order(tmp_path):
    rows = [{"task": "ner", "score": 1.5, "negative": True}, {"score": -0.25, "negative": False, "task": "pos"}]
    write_csv(tmp_path / "rows.csv", rows)
    with (tmp_path / "rows.csv").open(newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == [
            {"task": "ner", "score": "1.5", "negative": "True"},
            {"task": "pos", "score": "-0.25", "negative": "False"},
        ]
    assert csv_text(*columns_and_cells(rows)).splitlines()[0] == "task,score,negative"


def test_rows_with_other_columns_or_no_rows_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"row 1 has the columns \['score', 'task'\], expected those of row 0"):
        columns_and_cells([{"task": "ner"}, {"task": "pos", "score": 1.0}])
    with pytest.raises(ValueError, match="no rows to write to .*empty.csv"):
        write_csv(tmp_path / "empty.csv", [])

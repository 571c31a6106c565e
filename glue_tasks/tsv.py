"""Parse one original GLUE TSV file into Hub-style columns."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .formats import FileLayout
from .tasks import GlueTask

# STS-B similarity scores are in [0, 5] (the Hub dataset's range); anything else is a damaged file.
REGRESSION_LABEL_RANGE = (0.0, 5.0)


class GlueFormatError(ValueError):
    """
    A GLUE file does not have the expected layout.

    Args:
        path (`str` or `os.PathLike`):
            The offending file.
        line (`int`):
            1-based line number in that file.
        problem (`str`):
            What is wrong with that line.
    """

    def __init__(self, path: str | os.PathLike, line: int, problem: str):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}, line {line}: {problem}")


def _parse_label(raw: str, task: GlueTask) -> int | float:
    """Turn a label field into a class id (names or integer ids are accepted, as the Hub script does)."""
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"label {raw[:40]!r} is not a number") from None
        low, high = REGRESSION_LABEL_RANGE
        if not (math.isfinite(score) and low <= score <= high):
            raise ValueError(f"label {raw[:40]!r} is not a score in [{low:g}, {high:g}]")
        return score
    if raw in task.label2id:
        return task.label2id[raw]
    if raw.isdigit() and int(raw) < task.num_labels:
        return int(raw)
    expected = ", ".join(f"{i} or {name!r}" for i, name in task.id2label.items())
    raise ValueError(f"unknown label {raw!r} for {task.name} (expected {expected})")


def read_glue_tsv(path: str | os.PathLike, layout: FileLayout, task: GlueTask) -> dict[str, list]:
    """
    Read one original GLUE file into Hub columns.

    The file is read as GLUE distributes it: UTF-8 (a byte-order mark, as in MRPC, is skipped),
    tab-separated with quoting off (`csv.QUOTE_NONE`, since sentences contain unbalanced `"`).
    Every row must have as many fields as the header. Empty lines are skipped.

    Args:
        path (`str` or `os.PathLike`):
            The TSV file.
        layout ([`~glue_tasks.formats.FileLayout`]):
            Which columns of the file hold the Hub's text columns and label.
        task ([`GlueTask`]):
            The task, for its label names.

    Returns:
        `dict[str, list]`: the task's text columns, `label` (class id, -1 for unlabelled files, or a
        float score for STS-B) and `idx` (0-based row number), in Hub column order.

    Raises:
        [`GlueFormatError`]: naming the file and line of the first malformed row (wrong number of
            columns, missing header column, unknown label).
    """
    path = Path(path)
    try:
        return _read_rows(path, layout, task)
    except UnicodeDecodeError as error:  # the offset counts from a block the decoder read: find the line anew
        raise GlueFormatError(path, _first_undecodable_line(path), f"not UTF-8 ({error.reason})") from None


def _first_undecodable_line(path: Path) -> int:
    """The 1-based number of the first line of `path` that is not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _rows(reader, path: Path):
    """The rows of `reader`, with a `csv.Error` (a field over `csv.field_size_limit()` characters) reported as a
    [`GlueFormatError`] naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise GlueFormatError(path, reader.line_num, f"unreadable as TSV ({error})") from None
        yield row


def _read_rows(path: Path, layout: FileLayout, task: GlueTask) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in (*task.text_columns, "label", "idx")}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = layout.header
        if header is None:
            header = tuple(next(_rows(reader, path), ()))
            needed = [*layout.text_sources.values(), *([layout.label_source] if layout.label_source else [])]
            missing = [name for name in needed if name not in header]
            if missing:
                raise GlueFormatError(
                    path, 1, f"header {list(header)} lacks column(s) {missing} for {task.name} ({layout.filename})"
                )
        positions = {hub: header.index(source) for hub, source in layout.text_sources.items()}
        label_position = header.index(layout.label_source) if layout.label_source else None
        for row in _rows(reader, path):
            if not row:
                continue
            if len(row) != len(header):
                raise GlueFormatError(
                    path,
                    reader.line_num,
                    f"expected {len(header)} tab-separated columns ({', '.join(header)}), found {len(row)}",
                )
            for hub, position in positions.items():
                columns[hub].append(row[position])
            if label_position is None:
                label: int | float = -1.0 if task.is_regression else -1
            else:
                try:
                    label = _parse_label(row[label_position], task)
                except ValueError as error:
                    raise GlueFormatError(path, reader.line_num, str(error)) from None
            columns["label"].append(label)
            columns["idx"].append(len(columns["idx"]))
    return columns

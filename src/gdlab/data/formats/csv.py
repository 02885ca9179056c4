"""Delimited text (CSV, TSV): one row per sample, numeric feature columns and one label column
of numbers or class names."""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import Dataset
from gdlab.data.formats.common import (
    arrays_to_split_dataset, check_flag, check_split_options, one_line, read_file
)
from gdlab.data.split import is_integer
from gdlab.errors import GdlabError, did_you_mean

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_LISTED = 100


def _decode_text(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise GdlabError(
            f"'{path}' is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            f"save it as UTF-8 CSV"
        ) from None


def _csv_rows(text: str, path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each row that is not blank."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as error:
        raise GdlabError(
            f"'{path}' is not valid CSV at line {reader.line_num} ({one_line(error)}); check its "
            f"quoting and delimiter"
        ) from None
    return rows


def _quoted(text: str) -> str:
    """A cell's text for a one-line message: stripped, shortened, control characters escaped."""
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(label_column: str | int, header_cells: list[str] | None, ncols: int, path: Path) -> int:
    if isinstance(label_column, str):
        names = [cell.strip() for cell in header_cells or []]
        if label_column not in names:
            listed = ", ".join(map(_quoted, names[:20])) + (", ..." if len(names) > 20 else "")
            raise GdlabError(
                f"'{path}' has no column {_quoted(label_column)}"
                f"{did_you_mean(label_column, [n for n in names if n.isprintable()])}; its "
                f"columns are: {listed}"
            )
        return names.index(label_column)
    if not -ncols <= label_column < ncols:
        raise GdlabError(
            f"label_column={label_column} is out of range for '{path}', which has {ncols} columns; "
            f"give an index in [{-ncols}, {ncols - 1}] or a column name"
        )
    return label_column % ncols


def _parse_features(data: list[tuple[int, list[str]]], label: int, names: list[str], path: Path) -> np.ndarray:
    """Features as float64 (N, F): every cell but the label's, in column order."""
    X = np.empty((len(data), len(names) - 1), dtype=np.float64)
    features = [j for j in range(len(names)) if j != label]
    for i, (line, cells) in enumerate(data):
        values = cells[:label] + cells[label + 1 :]
        try:
            X[i] = list(map(float, values))
        except ValueError:
            k = next(k for k, cell in enumerate(values) if not _is_number(cell))
            problem = "is empty"
            if values[k].strip():
                problem = f"holds {_quoted(values[k])}, which is not a number"
            raise GdlabError(
                f"'{path}' row {line}, column {names[features[k]]}: the cell {problem}; give "
                f"numeric features only (encode categories as numbers, fill in missing values)"
            ) from None
    bad = ~np.isfinite(X) | (np.abs(X) > _FLOAT32_MAX)
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        cell = _quoted(data[i][1][features[k]])
        problem = "is NaN or infinite" if not np.isfinite(X[i, k]) else "is too large for float32"
        raise GdlabError(
            f"'{path}' row {data[i][0]}, column {names[features[k]]}: the value {cell} "
            f"{problem}; remove or impute it before training"
        )
    return X


def _parse_labels(data: list[tuple[int, list[str]]], label: int, column: str, task_type: str | None,
                  path: Path) -> tuple[np.ndarray, str, int | None, str]:
    """(y, task type, number of classes, note for the description) from the label column."""
    texts = [cells[label].strip() for _, cells in data]
    lines = [line for line, _ in data]
    for line, text in zip(lines, texts):
        if not text:
            raise GdlabError(f"'{path}' row {line}, column {column}: the label is empty; give every row a label")
    non_numeric = next((i for i, text in enumerate(texts) if not _is_number(text)), None)
    if non_numeric is not None:
        if task_type == "regression":
            raise GdlabError(
                f"'{path}' row {lines[non_numeric]}, column {column}: the target "
                f"{_quoted(texts[non_numeric])} is not a number, but task_type is 'regression'"
            )
        classes = sorted(set(texts))
        code = {name: i for i, name in enumerate(classes)}
        listed = ", ".join(
            f"{i}={name if name.isprintable() else _quoted(name)}"
            for i, name in enumerate(classes[:_MAX_LISTED])
        )
        if len(classes) > _MAX_LISTED:
            listed += f", ... ({len(classes)} classes)"
        y = np.array([code[text] for text in texts], dtype=np.int64)
        return y, "classification", len(classes), f"; classes: {listed}"
    values = np.array([float(text) for text in texts], dtype=np.float64)
    if task_type is None:
        integers = all(_INTEGER_TEXT.fullmatch(text) for text in texts)
        task_type = "classification" if integers else "regression"
    if task_type == "regression":
        bad = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)
        if bad.any():
            i = int(np.argmax(bad))
            raise GdlabError(
                f"'{path}' row {lines[i]}, column {column}: the target {_quoted(texts[i])} is "
                f"NaN, infinite or too large for float32; remove that row"
            )
        return values.reshape(-1, 1), task_type, None, ""
    for i, value in enumerate(values):
        if not (math.isfinite(value) and value == round(value) and 0 <= value < 2**31):
            problem = "is negative" if value < 0 else "is not a class"
            raise GdlabError(
                f"'{path}' row {lines[i]}, column {column}: the label {_quoted(texts[i])} {problem}; "
                f"classification labels are integers 0..K-1 or class names (for numeric targets "
                f"use task_type='regression')"
            )
    y = values.astype(np.int64)
    return y, task_type, int(y.max()) + 1, ""


def load_csv(
    path: str | os.PathLike, *, label_column: str | int = -1, header: bool | None = None,
    task_type: str | None = None, delimiter: str = ",", name: str | None = None, seed: int = 0,
    test_fraction: float = 0.2, standardize: bool = True, dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a data set from a UTF-8 CSV file with one row per sample: numeric feature columns
    and one label column (`label_column`: a header name or a column index, default the last).

    header: whether the first row holds column names; None detects it (a header when a feature
    cell of the first row is not a number; a label column given by name implies a header).
    Rows are numbered as in a spreadsheet (the first line is row 1) in error messages; blank
    lines are skipped. Labels: when task_type is None, labels that are all written as integers
    mean classification (labels 0..K-1, num_classes = max + 1), other numbers mean regression
    (y: (N, 1)), and any non-numeric label means classification with the sorted distinct names
    mapped to 0..K-1 (listed in the Dataset's description). The split (seed, test_fraction,
    stratified) and `standardize` are as in npz.load_npz. X: (N, F) float32. Raises GdlabError for
    an empty or non-UTF-8 file, ragged rows, and non-numeric, empty or non-finite cells.
    """
    path = Path(path)
    check_split_options(task_type, seed, test_fraction, standardize)
    if header is not None:
        check_flag("header", header)
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise GdlabError(f"delimiter must be one character such as ',', ';' or a tab, got {delimiter!r}")
    if not (isinstance(label_column, str) or is_integer(label_column)):
        raise GdlabError(f"label_column must be a column name or index, got {label_column!r}")
    if isinstance(label_column, str) and header is False:
        raise GdlabError(
            f"label_column '{label_column}' is a column name but header is false; give the "
            f"label column's index instead, or let the first row be the header"
        )
    raw = read_file(path)
    fix = "give a CSV file with one row per sample: feature columns and a label column"
    if not raw.strip():
        raise GdlabError(f"'{path}' is empty; {fix}")
    rows = _csv_rows(_decode_text(raw, path), path, delimiter)
    if not rows:
        raise GdlabError(f"'{path}' holds no rows; {fix}")
    ncols = len(rows[0][1])
    for line, cells in rows:
        if len(cells) != ncols:
            raise GdlabError(
                f"'{path}' row {line} has {len(cells)} columns but row {rows[0][0]} has {ncols} "
                f"(delimiter {delimiter!r}); give every row the same number of columns"
            )
    if ncols < 2:
        first = rows[0][1][0]
        other = next((d for d in (";", "\t", ",", "|") if d != delimiter and d in first), None)
        hint = f"; its rows contain {other!r}: set the delimiter to {other!r}" if other else ""
        raise GdlabError(
            f"'{path}' has one column with delimiter {delimiter!r}, but needs at least one "
            f"feature column and a label column{hint}"
        )
    first_cells = rows[0][1]
    if isinstance(label_column, str):
        header = True
    elif header is None:
        label_guess = _label_index(label_column, None, ncols, path)
        header = any(not _is_number(c) for j, c in enumerate(first_cells) if j != label_guess)
    label = _label_index(label_column, first_cells if header else None, ncols, path)
    names = [
        f"{_quoted(cell)} (column {j + 1})" if header else str(j + 1) for j, cell in enumerate(first_cells)
    ]
    data = rows[1:] if header else rows
    if not data:
        raise GdlabError(f"'{path}' has a header row but no data rows; {fix}")
    X = _parse_features(data, label, names, path)
    y, task_type, num_classes, classes_note = _parse_labels(data, label, names[label], task_type, path)
    label_name = _quoted(first_cells[label]) if header else f"column {label + 1}"
    return arrays_to_split_dataset(
        {"X": X, "y": y}, path, name=name or path.stem, task_type=task_type, seed=seed,
        test_fraction=test_fraction, standardize=standardize,
        description=f"loaded from {path}; label column {label_name}{classes_note}", dtype=dtype
    )

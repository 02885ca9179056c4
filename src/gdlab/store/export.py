"""Export a table or a SELECT of the run store to CSV or Parquet."""

from __future__ import annotations

import csv
import importlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, unknown_name
from gdlab.store.sqlite import TABLES, RunStore

FORMATS = (".csv", ".parquet")
_IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def export_query(store: RunStore, sql_or_table: str, out_path: str | Path) -> int:
    """Write a whole table (studies, runs, metrics, events, diagnostics) or the result of one
    SELECT to ``out_path``; the format follows the suffix: ``.csv`` or ``.parquet``.

    NULL is an empty CSV field and a Parquet null. The file appears complete or not at all (it is
    written beside the target, then renamed). Returns the number of rows written.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise GdlabError(f"cannot export to '{out.name}': unknown file type '{out.suffix}'; "
                         f"end the output path with .csv or .parquet")
    if suffix == ".parquet":
        _require_pyarrow()
    sql = _as_select(sql_or_table.strip())
    columns, rows = store.query(sql)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        (_write_csv if suffix == ".csv" else _write_parquet)(tmp, columns, rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(rows)


def _as_select(sql_or_table: str) -> str:
    if not _IDENTIFIER.match(sql_or_table):
        return sql_or_table
    if sql_or_table.lower() in TABLES:
        return f"SELECT * FROM {sql_or_table.lower()} ORDER BY rowid"
    raise unknown_name("table", sql_or_table, TABLES)


def _require_pyarrow() -> None:
    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise GdlabError("Parquet export needs pyarrow: install pyarrow "
                         "(pip install gdlab[parquet]), or export to .csv") from None


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def _write_parquet(path: Path, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for i in range(len(columns)):
        values = [row[i] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # SQLite lets one column mix types (a SELECT of 1 UNION 'x'); Parquet cannot.
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path)

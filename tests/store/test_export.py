"""Export of store tables and SELECTs to CSV and Parquet, complete or not at all."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from gdlab.errors import GdlabError
from gdlab.store import RunStore, StoredRun, export_query
from gdlab.store import export as export_module


def make_run(key: str, steps: int = 3) -> StoredRun:
    history = [{"step": s, "epochs": float(s), "wall_time_s": 0.1 * s, "batch_loss": 1.0 / (s + 1),
                "train_loss": 1.0 / (s + 1), "grad_norm": None if s == 1 else 0.5, "lr": 0.1,
                "test_loss": None, "test_accuracy": None}
               for s in range(steps)]
    history[0]["clip_factor"] = 0.25
    final = {"step": steps, "epochs": float(steps), "wall_time_s": 0.3, "train_loss": 0.2,
             "test_loss": None, "test_accuracy": 0.5, "grad_norm": 0.1, "status": "completed"}
    record = {"config": {"lr": 0.1}, "environment": {"seed": 0}, "final": final,
              "history": history,
              "events": [{"step": 0, "kind": "clip", "detail": "first clipped step, \"4 -> 2\""}],
              "diagnostics": {"sharpness": [{"step": 0, "value": 12.5}]}}
    return StoredRun(run_key=key, study="demo", task="blobs", optimizer="sgd", phase="final",
                     trial=None, seed=0, lr=0.1, params={"momentum": 0.9}, record=record)


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "gdlab.db") as s:
        for key in ("a", "b"):
            s.add_run(make_run(key))
        s.save_study("demo", {"tasks": ["blobs"], "note": "comma, quote \" and\nnewline"})
        yield s


def as_csv_cells(rows: list[tuple]) -> list[list[str]]:
    """How the csv module writes rows: NULL as an empty field, numbers by str()."""
    return [["" if v is None else str(v) for v in row] for row in rows]


@pytest.mark.parametrize("table", ["runs", "metrics", "events", "diagnostics", "studies"])
def test_csv_of_a_table_equals_its_rows(store: RunStore, tmp_path: Path, table: str) -> None:
    """A table name exports the whole table; reading the CSV back with the csv module gives the
    header and the rows of SELECT * (reference: store.query)."""
    out = tmp_path / "out" / f"{table}.csv"
    n = export_query(store, table, out)
    columns, rows = store.query(f"SELECT * FROM {table}")
    with open(out, newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))
    assert n == len(rows) > 0
    assert header == columns
    assert body == as_csv_cells(rows)


def test_csv_of_a_select(store: RunStore, tmp_path: Path) -> None:
    """A SELECT exports its result; floats survive the text round trip exactly (reference: the
    query's rows)."""
    sql = "SELECT run_key, step, train_loss, grad_norm FROM metrics WHERE run_key = 'b'"
    out = tmp_path / "b.csv"
    assert export_query(store, sql, out) == 3
    with open(out, newline="") as f:
        header, *body = list(csv.reader(f))
    columns, rows = store.query(sql)
    assert header == columns and body == as_csv_cells(rows)
    assert [float(r[2]) for r in body] == [r[2] for r in rows]


def test_parquet_read_back_equals_the_rows(store: RunStore, tmp_path: Path) -> None:
    """Parquet keeps column names, types and nulls: pyarrow reads back the query's rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    for source, sql in [("metrics", "SELECT * FROM metrics"),
                        ("SELECT run_key, trial, lr, test_loss, steps FROM runs",
                         "SELECT run_key, trial, lr, test_loss, steps FROM runs"),
                        ("SELECT * FROM runs WHERE 0", "SELECT * FROM runs WHERE 0")]:
        out = tmp_path / "out.parquet"
        n = export_query(store, source, out)
        columns, rows = store.query(sql)
        table = pq.read_table(out)
        assert n == len(rows)
        assert table.column_names == columns
        assert [tuple(r.values()) for r in table.to_pylist()] == rows


def test_parquet_column_of_mixed_types_becomes_text(store: RunStore, tmp_path: Path) -> None:
    """SQLite lets one result column mix types; Parquet gets it as text (reference: str())."""
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "mixed.parquet"
    export_query(store, "SELECT 1 AS v UNION ALL SELECT 'x' UNION ALL SELECT NULL", out)
    assert pq.read_table(out).column("v").to_pylist() == ["1", "x", None]


def test_parquet_without_pyarrow_names_the_install(store: RunStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pyarrow a Parquet export is a GdlabError naming the install, and writes nothing."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(GdlabError, match=r"pip install gdlab\[parquet\]"):
        export_query(store, "runs", tmp_path / "x" / "runs.parquet")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("source, name, message", [
    ("runs", "runs.xlsx", "unknown file type '.xlsx'"),
    ("runs", "runs", "unknown file type ''"),
    ("SELECT * FROM nowhere", "out.csv", "no such table"),
    ("DELETE FROM runs", "out.csv", "only a single SELECT"),
    ("SELECT 1; DROP TABLE runs", "out.csv", "one statement"),
    ("run", "out.csv", "unknown table 'run'.*did you mean 'runs'"),
])
def test_bad_export_is_a_gdlab_error_and_leaves_no_file(store: RunStore, tmp_path: Path,
                                                        source: str, name: str,
                                                        message: str) -> None:
    """A bad extension, bad SQL or unknown table is a one-line GdlabError; the output folder
    stays empty and the store unchanged (reference: the folder listing, the run keys)."""
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    with pytest.raises(GdlabError, match=message) as info:
        export_query(store, source, out_dir / name)
    assert "\n" not in str(info.value)
    assert list(out_dir.iterdir()) == []
    assert store.run_keys() == {"a", "b"}


def test_failed_write_keeps_the_previous_file(store: RunStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the earlier export untouched and no temporary file
    (reference: the earlier file's bytes, the folder listing)."""
    out = tmp_path / "runs.csv"
    export_query(store, "runs", out)
    before = out.read_bytes()

    def fail_half_way(path: Path, columns: list[str], rows: list[tuple]) -> None:
        path.write_text("run_key\na\n")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_csv", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        export_query(store, "metrics", out)
    assert out.read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} == {"runs.csv", "gdlab.db", "gdlab.db-wal",
                                                     "gdlab.db-shm"}

"""The SQLite run store: exact round trips, once-only storage, concurrent and killed writers."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from gdlab.errors import GdlabError
from gdlab.store import DEFAULT_STORE_PATH, PHASES, RunStore, StoredRun


def make_record(steps: int = 4) -> dict:
    """A record shaped like ``RunResult.to_record()``: nulls, an extra history key (clip_factor),
    a history item without batch_loss, a layer event, a run-level event, diagnostics with a null,
    and an extra top-level key."""
    history = [
        {"step": s, "epochs": float(s), "wall_time_s": 0.01 * s, "batch_loss": 1.0 / (s + 1),
         "train_loss": 1.0 / (s + 1), "grad_norm": 2.0 ** -s, "lr": 0.1, "test_loss": None,
         "test_accuracy": None}
        for s in range(steps)
    ]
    history[1]["clip_factor"] = 0.5
    history[2].update(test_loss=0.7, test_accuracy=0.9)
    history.append({"step": steps, "epochs": float(steps), "wall_time_s": 0.05, "train_loss": 0.1,
                    "grad_norm": None, "lr": 0.1, "test_loss": 0.2, "test_accuracy": 0.95})
    return {
        "config": {"task": "blobs", "model": "mlp:2-16-3:relu", "optimizer": "sgd", "lr": 0.1,
                   "regime": "full", "stop": {"max_steps": steps, "loss_tol": None}, "seed": 3},
        "environment": {"gdlab": "0.1.0", "torch": "2.13.0", "device": "cpu", "threads": 1,
                        "seed": 3, "config_hash": "abc123"},
        "final": {"step": steps, "epochs": float(steps), "wall_time_s": 0.05, "train_loss": 0.1,
                  "test_loss": 0.2, "test_accuracy": None, "grad_norm": 0.01,
                  "status": "completed", "stop_reason": "max_steps", "loss_evaluations": None,
                  "health": {"fc1.weight": {"grad_norm": 0.1, "vanishing": False}}},
        "history": history,
        "events": [
            {"step": 1, "kind": "clip", "detail": "first clipped step: gradient norm 4 -> 2"},
            {"step": 2, "kind": "vanishing", "layer": "fc1.weight", "detail": "norm 1e-9"},
            {"step": None, "kind": "nonfinite_value", "detail": "final.x was nan; written as null"},
        ],
        "diagnostics": {
            "sharpness": [{"step": 0, "value": 3.5}, {"step": 2, "value": None}],
            "two_over_lr": [{"step": 0, "value": 20.0}, {"step": 2, "value": 20.0}],
            "grad_norm/fc1.weight": [{"step": 1, "value": 0.25}],
        },
        "summary": {"note": "top-level keys may be added"},
    }


def make_run(key: str, *, study: str = "demo", task: str = "blobs", phase: str = "final",
             trial: int | None = None, steps: int = 4) -> StoredRun:
    return StoredRun(run_key=key, study=study, task=task, optimizer="sgd", phase=phase,
                     trial=trial, seed=3, lr=0.1, params={"momentum": 0.9, "nesterov": True},
                     record=make_record(steps))


def count(path: Path, sql: str, params: tuple = ()) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchone()[0]


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "runs" / "gdlab.db") as s:
        yield s


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch) -> mp.context.BaseContext:
    """A spawn context whose children can import this module under the name pytest gave it
    (--import-mode=importlib does not put the test folders on sys.path)."""
    root = Path(__file__).resolve().parent
    for _ in range(__name__.count(".")):
        root = root.parent
    monkeypatch.syspath_prepend(str(root))
    return mp.get_context("spawn")


def test_round_trip_gives_back_the_record_added(store: RunStore) -> None:
    """runs() reassembles config, environment, final, history (same keys, nulls, extra keys),
    events and diagnostics exactly; reference: the StoredRun added, compared field by field
    and as sorted JSON (which also tells 1 from 1.0)."""
    added = [make_run("a", phase="tune", trial=0), make_run("b", steps=7)]
    for run in added:
        assert store.add_run(run) is True
    got = store.runs()
    assert got == added
    for g, a in zip(got, added):
        assert json.dumps(g.record, sort_keys=True) == json.dumps(a.record, sort_keys=True)
        assert list(g.record) == list(a.record)
        assert [list(h) for h in g.history] == [list(h) for h in a.history]


def test_scalar_columns_are_copied_from_final(store: RunStore) -> None:
    """The runs table exposes final's scalars (step -> steps) and one metrics row per history
    record, so plain SQL can read them; reference: the record's own values."""
    run = make_run("a")
    store.add_run(run)
    columns, rows = store.query(
        "SELECT status, train_loss, test_loss, test_accuracy, epochs, wall_time_s, steps, trial, "
        "json_extract(params_json, '$.momentum') FROM runs")
    assert columns[:7] == ["status", "train_loss", "test_loss", "test_accuracy", "epochs",
                           "wall_time_s", "steps"]
    f = run.final
    assert rows == [(f["status"], f["train_loss"], f["test_loss"], None, f["epochs"],
                     f["wall_time_s"], f["step"], None, 0.9)]
    _, rows = store.query("SELECT step, train_loss, json_extract(extra_json, '$.clip_factor') "
                          "FROM metrics WHERE run_key = ?", ("a",))
    assert rows == [(h["step"], h["train_loss"], h.get("clip_factor")) for h in run.history]


def test_non_finite_numbers_are_stored_as_null(store: RunStore) -> None:
    """NaN and Inf anywhere in a record become NULL in the tables and None when read back; the
    record shape writes them as null (reference: DESIGN.md, "The run record")."""
    run = make_run("a")
    run.record["final"]["train_loss"] = math.nan
    run.record["final"]["health"]["fc1.weight"]["grad_norm"] = math.inf
    run.record["history"][0]["grad_norm"] = -math.inf
    run.record["history"][1]["clip_factor"] = math.nan
    run.record["diagnostics"]["sharpness"][0]["value"] = math.nan
    store.add_run(run)
    _, rows = store.query("SELECT train_loss FROM runs UNION ALL "
                          "SELECT grad_norm FROM metrics WHERE step = 0 UNION ALL "
                          "SELECT value FROM diagnostics WHERE name = 'sharpness' AND step = 0")
    assert rows == [(None,), (None,), (None,)]
    record = store.runs()[0].record
    assert record["final"]["train_loss"] is None
    assert record["final"]["health"]["fc1.weight"]["grad_norm"] is None
    assert record["history"][0]["grad_norm"] is None
    assert record["history"][1]["clip_factor"] is None
    assert record["diagnostics"]["sharpness"][0]["value"] is None


def test_add_run_twice_stores_it_once(store: RunStore) -> None:
    """A second add_run of a stored key returns False and changes nothing (a re-run study stores
    each run once); reference: row counts of runs and metrics."""
    assert store.add_run(make_run("a")) is True
    changed = make_run("a", steps=9)
    assert store.add_run(changed) is False
    assert store.has_run("a") and not store.has_run("b")
    assert count(store.path, "SELECT COUNT(*) FROM runs WHERE run_key = 'a'") == 1
    assert count(store.path, "SELECT COUNT(*) FROM metrics WHERE run_key = 'a'") == 5
    assert store.runs()[0] == make_run("a")


def test_filters_order_keys_and_studies(store: RunStore) -> None:
    """runs() filters by study, phase and task and keeps insertion order; run_keys and studies
    list what is stored; reference: the keys added."""
    store.add_run(make_run("z1", study="s2", phase="tune", trial=0))
    store.add_run(make_run("a1", study="s1", task="iris"))
    store.add_run(make_run("m1", study="s2", phase="final"))
    assert [r.run_key for r in store.runs()] == ["z1", "a1", "m1"]
    assert [r.run_key for r in store.runs(study="s2")] == ["z1", "m1"]
    assert [r.run_key for r in store.runs(study="s2", phase="final")] == ["m1"]
    assert [r.run_key for r in store.runs(task="iris")] == ["a1"]
    assert store.runs(study="none") == []
    assert store.run_keys() == {"z1", "a1", "m1"}
    assert store.run_keys("s1") == {"a1"}
    store.save_study("s0", {"name": "s0"})
    assert store.studies() == ["s0", "s1", "s2"]
    with pytest.raises(GdlabError, match="unknown phase 'finale'.*did you mean 'final'"):
        store.runs(phase="finale")
    assert "final" in PHASES


def test_save_study_replaces_the_spec(store: RunStore) -> None:
    """save_study keeps the latest spec per name; study_spec gives None for an unknown name;
    reference: the dicts saved."""
    assert store.study_spec("s") is None
    store.save_study("s", {"tasks": ["blobs"], "seeds": [0, 1]})
    store.save_study("s", {"tasks": ["iris"], "budget": {"steps": 100, "tol": None}})
    assert store.study_spec("s") == {"tasks": ["iris"], "budget": {"steps": 100, "tol": None}}
    assert count(store.path, "SELECT COUNT(*) FROM studies") == 1


def test_store_settings(store: RunStore) -> None:
    """The file is in WAL mode with schema version 1, in a parent folder made on demand;
    reference: SQLite's own PRAGMAs."""
    assert store.path.parent.is_dir()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert DEFAULT_STORE_PATH == "runs/gdlab.db"


def _add_runs(path: str, keys: list[str], barrier, results) -> None:
    barrier.wait(timeout=60)
    with RunStore(path) as store:
        results.put(sum(store.add_run(make_run(key, steps=20)) for key in keys))


def _run_writers(spawn, path: Path, key_lists: list[list[str]]) -> list[int]:
    barrier, results = spawn.Barrier(len(key_lists)), spawn.Queue()
    procs = [spawn.Process(target=_add_runs, args=(str(path), keys, barrier, results))
             for keys in key_lists]
    for p in procs:
        p.start()
    added = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return added


def test_concurrent_writers_store_every_run_once(spawn, tmp_path: Path) -> None:
    """4 processes opening a new store at once and adding 25 runs each leave 100 runs, each
    once, with all their metrics; reference: row counts."""
    path = tmp_path / "gdlab.db"
    key_lists = [[f"p{p}-r{r}" for r in range(25)] for p in range(4)]
    assert sorted(_run_writers(spawn, path, key_lists)) == [25, 25, 25, 25]
    with RunStore(path, create=False) as store:
        assert store.run_keys() == {k for keys in key_lists for k in keys}
        assert all(len(r.history) == 21 for r in store.runs())
    assert count(path, "SELECT COUNT(*) FROM runs") == 100
    assert count(path, "SELECT COUNT(*) FROM metrics") == 100 * 21


def test_concurrent_writers_of_the_same_keys_store_each_once(spawn, tmp_path: Path) -> None:
    """2 processes adding the same 20 keys at once store each key once, and the True returns add
    up to 20; reference: row counts."""
    path = tmp_path / "gdlab.db"
    RunStore(path).close()
    keys = [f"k{i}" for i in range(20)]
    assert sum(_run_writers(spawn, path, [keys, keys])) == 20
    assert count(path, "SELECT COUNT(*) FROM runs") == 20
    assert count(path, "SELECT COUNT(*) FROM metrics") == 20 * 21
    assert count(path, "SELECT COUNT(DISTINCT run_key) FROM metrics") == 20


def _add_and_hang(path: str, ready) -> None:
    import gdlab.store.sqlite as sqlite_store

    insert_history = sqlite_store._insert_history

    def insert_then_hang(conn, run_key, history):
        conn.execute("PRAGMA cache_size = 1")  # spill the uncommitted pages into the WAL file
        insert_history(conn, run_key, history)
        ready.set()
        time.sleep(600)

    sqlite_store._insert_history = insert_then_hang
    with RunStore(path) as store:
        store.add_run(make_run("doomed", steps=3000))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_no_partial_run(spawn, tmp_path: Path) -> None:
    """A writer SIGKILLed inside add_run, after its runs row and metrics rows were written (and
    spilled to the WAL) but before commit, leaves neither behind; the store stays readable and
    writable; reference: SQLite's atomic commit, seen through row counts."""
    path = tmp_path / "gdlab.db"
    wal = Path(f"{path}-wal")
    with RunStore(path) as store:
        store.add_run(make_run("kept"))
        wal_before = wal.stat().st_size
        ready = spawn.Event()
        child = spawn.Process(target=_add_and_hang, args=(str(path), ready))
        child.start()
        try:
            assert ready.wait(timeout=60)
            assert wal.stat().st_size > wal_before
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL
        assert not store.has_run("doomed")
        assert [r.run_key for r in store.runs()] == ["kept"]
        assert store.add_run(make_run("after")) is True
    with RunStore(path, create=False) as store:
        assert store.run_keys() == {"kept", "after"}
    assert count(path, "SELECT COUNT(*) FROM metrics WHERE run_key = 'doomed'") == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_query_runs_a_select(store: RunStore) -> None:
    """query() gives column names and rows of one SELECT, WITH or commented; reference: the
    stored values."""
    store.add_run(make_run("a"))
    store.add_run(make_run("b", study="other"))
    assert store.query("SELECT run_key, study FROM runs WHERE study = ? ORDER BY run_key",
                       ("demo",)) == (["run_key", "study"], [("a", "demo")])
    columns, rows = store.query("-- best loss\nWITH t AS (SELECT run_key, MIN(train_loss) AS m "
                                "FROM metrics GROUP BY run_key) SELECT * FROM t ORDER BY run_key;")
    assert columns == ["run_key", "m"] and rows == [("a", 0.1), ("b", 0.1)]
    assert store.query("SELECT * FROM events WHERE kind = 'nope'")[1] == []


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs",
    "SELECT 1; DELETE FROM runs",
    "SELECT 1; SELECT 2",
    "WITH t AS (SELECT 1) DELETE FROM runs",
    "UPDATE runs SET lr = 0",
    "DROP TABLE runs",
    "PRAGMA user_version = 7",
    "ATTACH DATABASE 'x.db' AS x",
    "SELECT * FROM no_such_table",
    "",
])
def test_query_refuses_anything_but_one_select(store: RunStore, sql: str) -> None:
    """Writes, PRAGMAs, two statements and invalid SQL are GdlabErrors and change nothing;
    reference: the run count before and after."""
    store.add_run(make_run("a"))
    with pytest.raises(GdlabError) as info:
        store.query(sql)
    assert "\n" not in str(info.value)
    assert store.run_keys() == {"a"}
    assert count(store.path, "PRAGMA user_version") == 1


def test_a_file_that_is_not_a_store_is_a_gdlab_error(tmp_path: Path) -> None:
    """A text file, or another program's SQLite database, as store path is a one-line
    GdlabError that leaves the file as it was; reference: the file's bytes."""
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 20)
    with pytest.raises(GdlabError, match="not a usable gdlab run store") as info:
        RunStore(text)
    assert "\n" not in str(info.value)
    assert text.read_text() == "these are my notes, not a database\n" * 20
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(GdlabError, match="not a gdlab run store.*customers"):
        RunStore(other)
    with pytest.raises(GdlabError, match="cannot open the run store"):
        RunStore(tmp_path)


def test_create_false_needs_an_existing_store(tmp_path: Path) -> None:
    """create=False on a missing file is a GdlabError and creates nothing; on an existing store
    it opens it; reference: the file system."""
    path = tmp_path / "runs" / "gdlab.db"
    with pytest.raises(GdlabError, match="no run store at .*gdlab compare"):
        RunStore(path, create=False)
    assert not path.parent.exists()
    RunStore(path).close()
    with RunStore(path, create=False) as store:
        assert store.runs() == []

"""The run store: every run of every study in one SQLite file, queryable with plain SQL.

Several processes may write to one store at once (WAL journal, a 60 s busy timeout, and each run
added in one ``BEGIN IMMEDIATE`` transaction), so a killed writer never leaves half a run behind.
WAL needs a local file system: do not put a store on a network share.

Schema (version 1, kept in ``PRAGMA user_version``); rows keep their insertion order (rowid).
Numbers that are not finite (NaN, Inf) are stored as NULL, as the run record writes them as null.

``studies``: one row per study file, as validated.
    name TEXT PRIMARY KEY, spec_json TEXT, created_at TEXT (ISO 8601, UTC)
``runs``: one row per run; the scalar columns are copied from the record's ``final`` part.
    run_key TEXT PRIMARY KEY, study, task, optimizer, phase ("tune" | "final" | "single"),
    trial INTEGER (NULL outside tuning), seed INTEGER, lr REAL, params_json TEXT,
    status TEXT, train_loss, test_loss, test_accuracy, epochs, wall_time_s REAL,
    steps INTEGER (final.step), config_json, environment_json, final_json TEXT,
    extra_json TEXT (other top-level keys of the record, NULL if none), created_at TEXT
``metrics``: one row per history record, in the order logged.
    run_key, step INTEGER, epochs, wall_time_s, batch_loss, train_loss, grad_norm, lr,
    test_loss, test_accuracy REAL, extra_json TEXT (the record's other keys, e.g. clip_factor)
``events``: one row per event.
    run_key, step INTEGER (NULL for run-level events), kind TEXT, detail TEXT,
    extra_json TEXT (other keys, e.g. layer)
``diagnostics``: one row per point of a diagnostics series.
    run_key, name TEXT (e.g. sharpness, grad_norm/fc1.weight), step INTEGER, value REAL

``metrics``, ``events`` and ``diagnostics`` reference ``runs(run_key)`` and are indexed on it.
An ``extra_json`` holding ``"_absent_keys"`` lists the columns whose key the original item lacked,
so that reading a run back gives exactly the record that was added.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, unknown_name
from gdlab.store.records import PHASES, StoredRun

DEFAULT_STORE_PATH = "runs/gdlab.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
TABLES = ("studies", "runs", "metrics", "events", "diagnostics")

_RUN_PARTS = ("config", "environment", "final", "history", "events", "diagnostics")
_METRIC_COLUMNS = ("step", "epochs", "wall_time_s", "batch_loss", "train_loss", "grad_norm", "lr",
                   "test_loss", "test_accuracy")
_EVENT_COLUMNS = ("step", "kind", "detail")
_ABSENT = "_absent_keys"


def _table(name: str, *columns: str) -> str:
    """CREATE TABLE with one column per line, the text SQLite keeps in sqlite_master."""
    return f"CREATE TABLE {name} (\n" + ",\n".join(f"        {c}" for c in columns) + "\n    )"


_RUN_DEFINITIONS = (
    "run_key TEXT PRIMARY KEY", "study TEXT NOT NULL", "task TEXT NOT NULL", "optimizer TEXT NOT NULL",
    "phase TEXT NOT NULL", "trial INTEGER", "seed INTEGER", "lr REAL", "params_json TEXT NOT NULL",
    "status TEXT", "train_loss REAL", "test_loss REAL", "test_accuracy REAL", "epochs REAL",
    "wall_time_s REAL", "steps INTEGER", "config_json TEXT NOT NULL", "environment_json TEXT NOT NULL",
    "final_json TEXT NOT NULL", "extra_json TEXT", "created_at TEXT NOT NULL",
)
_RUN_COLUMNS = tuple(definition.split()[0] for definition in _RUN_DEFINITIONS)
_CHILD_KEY = "run_key TEXT NOT NULL REFERENCES runs(run_key) ON DELETE CASCADE"
_SCHEMA = (
    _table("studies", "name TEXT PRIMARY KEY", "spec_json TEXT NOT NULL", "created_at TEXT NOT NULL"),
    _table("runs", *_RUN_DEFINITIONS),
    "CREATE INDEX runs_study ON runs(study)",
    _table("metrics", _CHILD_KEY, "step INTEGER", *(f"{c} REAL" for c in _METRIC_COLUMNS[1:]),
           "extra_json TEXT"),
    "CREATE INDEX metrics_run_key ON metrics(run_key)",
    _table("events", _CHILD_KEY, "step INTEGER", "kind TEXT", "detail TEXT", "extra_json TEXT"),
    "CREATE INDEX events_run_key ON events(run_key)",
    _table("diagnostics", _CHILD_KEY, "name TEXT NOT NULL", "step INTEGER", "value REAL"),
    "CREATE INDEX diagnostics_run_key ON diagnostics(run_key)",
)

# Leading whitespace and SQL comments, then the first keyword of the statement.
_FIRST_KEYWORD = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                           sqlite3.SQLITE_RECURSIVE})


class RunStore:
    """SQLite run store: one file, WAL mode, safe for several processes writing at once.

    ``path``: the store file (conventionally ``runs/gdlab.db``). ``create``: make the file and its
    parent folder if missing; with ``create=False`` a missing file is a GdlabError. A file that is
    not a gdlab store (not SQLite, corrupted, another program's database, a newer schema) is a
    GdlabError. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GdlabError(f"no run store at {self.path}; run gdlab compare first, "
                                 f"or pass the path of an existing store")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; this class issues BEGIN/COMMIT itself.
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise GdlabError(f"cannot open the run store {self.path} ({exc}); "
                             f"check that the path is a file you can write") from None
        self._reader: sqlite3.Connection | None = None
        try:
            with self._user_errors(opening=True):
                self._configure()
        except BaseException:
            self._conn.close()
            raise

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if self._schema_version() == SCHEMA_VERSION:
            return
        with self._transaction():
            # Re-read under the write lock: another process may have created the schema meanwhile.
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise GdlabError(f"the run store {self.path} has schema version {version}, newer than "
                                 f"this gdlab understands ({SCHEMA_VERSION}); upgrade gdlab")
            if version == 0:
                others = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
                if others:
                    raise GdlabError(f"{self.path} is a SQLite database but not a gdlab run store (it has "
                                     f"tables {', '.join(sorted(others))}); choose another store path")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _enable_wal(self) -> None:
        # Switching the journal mode answers "locked" at once, without the busy handler, while
        # another process opens the same new file; so wait here as the busy timeout would.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the connections; the store file stays."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction; IMMEDIATE takes the write lock up front so writers queue instead of
        failing on a lock upgrade half-way."""
        conn = self._conn
        conn.execute(begin)
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _user_errors(self, opening: bool = False) -> Iterator[None]:
        """Report a locked or damaged store as a GdlabError; other sqlite3 errors are bugs."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise GdlabError(f"the run store {self.path} stayed locked by another process for "
                                 f"{BUSY_TIMEOUT_S:g} s; wait for it to finish or use another store "
                                 f"path") from None
            raise GdlabError(f"the run store {self.path} could not be used ({exc}); "
                             f"check the file and its permissions") from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:
                raise
            if opening:
                raise GdlabError(f"{self.path} is not a usable gdlab run store ({exc}); "
                                 f"choose another store path or move this file aside") from None
            raise GdlabError(f"the run store {self.path} is damaged ({exc}); "
                             f"restore it from a copy or start a new store") from None

    def has_run(self, run_key: str) -> bool:
        """Whether a run with this key is stored."""
        with self._user_errors():
            row = self._conn.execute("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)).fetchone()
        return row is not None

    def add_run(self, run: StoredRun) -> bool:
        """Store the run with its history, events and diagnostics, all in one transaction.

        Returns False, changing nothing, when ``run.run_key`` is already stored, so that a study
        run again (or by several processes at once) stores each run exactly once.
        """
        record = run.record
        final = record.get("final") or {}
        extra = {k: v for k, v in record.items() if k not in _RUN_PARTS}
        row = (
            run.run_key, run.study, run.task, run.optimizer, run.phase, run.trial, run.seed,
            _cell(run.lr), _dumps(run.params),
            *(_cell(final.get(k)) for k in ("status", "train_loss", "test_loss", "test_accuracy", "epochs",
                                            "wall_time_s", "step")),
            _dumps(record.get("config", {})), _dumps(record.get("environment", {})),
            _dumps(final), _dumps(extra) if extra else None, _now(),
        )
        with self._user_errors(), self._transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_key = ?", (run.run_key,)).fetchone():
                return False
            conn.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_RUN_COLUMNS))})", row)
            _insert_history(conn, run.run_key, record.get("history", []))
            _insert_items(conn, "events", _EVENT_COLUMNS, run.run_key, record.get("events", []))
            _insert_diagnostics(conn, run.run_key, record.get("diagnostics", {}))
        return True

    def runs(self, *, study: str | None = None, phase: str | None = None,
             task: str | None = None) -> list[StoredRun]:
        """The stored runs matching every filter given, in insertion order, with full records."""
        if phase is not None and phase not in PHASES:
            raise unknown_name("phase", phase, PHASES)
        where, params = _where(study=study, phase=phase, task=task)
        selected = f"SELECT run_key FROM runs {where}"
        with self._user_errors(), self._transaction("BEGIN") as conn:
            run_rows = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs {where} "
                                    f"ORDER BY rowid", params).fetchall()
            history: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in run_rows}
            events: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in run_rows}
            diagnostics: dict[str, dict[str, list[dict[str, Any]]]] = {r[0]: {} for r in run_rows}

            def rows_of(table: str, columns: str) -> sqlite3.Cursor:
                return conn.execute(f"SELECT run_key, {columns} FROM {table} "
                                    f"WHERE run_key IN ({selected}) ORDER BY run_key, rowid", params)

            for table, columns, items in (("metrics", _METRIC_COLUMNS, history),
                                          ("events", _EVENT_COLUMNS, events)):
                for key, *values, extra_json in rows_of(table, f"{', '.join(columns)}, extra_json"):
                    items[key].append(_join(columns, values, extra_json))
            for key, name, step, value in rows_of("diagnostics", "name, step, value"):
                diagnostics[key].setdefault(name, []).append({"step": step, "value": value})
        stored = []
        for row in run_rows:
            r = dict(zip(_RUN_COLUMNS, row))
            key = r["run_key"]
            record = {part: json.loads(r[f"{part}_json"]) for part in ("config", "environment", "final")}
            record.update(history=history[key], events=events[key], diagnostics=diagnostics[key])
            if r["extra_json"]:
                record.update(json.loads(r["extra_json"]))
            stored.append(StoredRun(run_key=key, study=r["study"], task=r["task"], optimizer=r["optimizer"],
                                    phase=r["phase"], trial=r["trial"], seed=r["seed"], lr=r["lr"],
                                    params=json.loads(r["params_json"]), record=record))
        return stored

    def run_keys(self, study: str | None = None) -> set[str]:
        """The keys of the stored runs, of one study or of all."""
        where, params = _where(study=study)
        with self._user_errors():
            return {r[0] for r in self._conn.execute(f"SELECT run_key FROM runs {where}", params)}

    def studies(self) -> list[str]:
        """Names of the studies with a saved spec or with stored runs, sorted."""
        with self._user_errors():
            rows = self._conn.execute("SELECT name FROM studies UNION SELECT study FROM runs ORDER BY 1")
            return [r[0] for r in rows]

    def save_study(self, name: str, spec: dict[str, Any]) -> None:
        """Save a study's validated spec as JSON, replacing an earlier spec of the same name
        (its first ``created_at`` is kept)."""
        with self._user_errors(), self._transaction() as conn:
            conn.execute("INSERT INTO studies (name, spec_json, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET spec_json = excluded.spec_json",
                         (name, _dumps(spec), _now()))

    def study_spec(self, name: str) -> dict[str, Any] | None:
        """The saved spec of study ``name``, or None if none was saved."""
        with self._user_errors():
            row = self._conn.execute("SELECT spec_json FROM studies WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        """Run one read-only SELECT (or WITH ... SELECT) statement; return (column names, rows).

        Anything else (a write, a PRAGMA, two statements, invalid SQL) is a GdlabError.
        """
        match = _FIRST_KEYWORD.match(sql)
        if match is None or match.group(1).upper() not in ("SELECT", "WITH"):
            raise GdlabError(f"only a single SELECT statement can be queried, not {_preview(sql)!r}; "
                             f"tables: {', '.join(TABLES)}")
        try:
            cursor = self._read_only().execute(sql, tuple(params))
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall()
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise GdlabError(f"query {_preview(sql)!r} failed: {str(exc).rstrip('.')}; it must be one "
                             f"read-only SELECT over the tables {', '.join(TABLES)}") from None
        return columns, rows

    def _read_only(self) -> sqlite3.Connection:
        """A second connection for user SQL: opened read-only, and its authorizer denies anything
        but reading, which also catches ``WITH ... DELETE`` (the keyword check is for the message)."""
        if self._reader is None:
            reader = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_S, isolation_level=None)
            reader.set_authorizer(_read_only_authorizer)
            self._reader = reader
        return self._reader


def _insert_history(conn: sqlite3.Connection, run_key: str, history: list[dict[str, Any]]) -> None:
    _insert_items(conn, "metrics", _METRIC_COLUMNS, run_key, history)


def _insert_items(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], run_key: str,
                  items: list[dict[str, Any]]) -> None:
    conn.executemany(f"INSERT INTO {table} (run_key, {', '.join(columns)}, extra_json) "
                     f"VALUES (?, {', '.join('?' * len(columns))}, ?)",
                     ((run_key, *_split(columns, item)) for item in items))


def _insert_diagnostics(conn: sqlite3.Connection, run_key: str,
                        diagnostics: Mapping[str, list[dict[str, Any]]]) -> None:
    conn.executemany("INSERT INTO diagnostics (run_key, name, step, value) VALUES (?, ?, ?, ?)",
                     ((run_key, name, _cell(point.get("step")), _cell(point.get("value")))
                      for name, series in diagnostics.items() for point in series))


def _split(columns: tuple[str, ...], item: Mapping[str, Any]) -> tuple[Any, ...]:
    """Column values of ``item``, then its other keys (and the columns it lacks) as JSON."""
    extra = {k: v for k, v in item.items() if k not in columns}
    absent = [c for c in columns if c not in item]
    if absent:
        extra[_ABSENT] = absent
    return (*(_cell(item.get(c)) for c in columns), _dumps(extra) if extra else None)


def _join(columns: tuple[str, ...], values: Sequence[Any], extra_json: str | None) -> dict[str, Any]:
    """Inverse of :func:`_split`."""
    extra = json.loads(extra_json) if extra_json else {}
    absent = set(extra.pop(_ABSENT, ()))
    item = {c: v for c, v in zip(columns, values) if c not in absent}
    item.update(extra)
    return item


def _where(**filters: str | None) -> tuple[str, tuple[Any, ...]]:
    given = {k: v for k, v in filters.items() if v is not None}
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())


def _cell(value: Any) -> Any:
    """A value as SQLite stores it: non-finite floats become NULL, float subclasses plain floats."""
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_finite(value), allow_nan=False, separators=(",", ":"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _preview(sql: str, limit: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _read_only_authorizer(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY

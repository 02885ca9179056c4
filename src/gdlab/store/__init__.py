"""The run store: runs, their per-step metrics, events and diagnostics in one SQLite file."""

from gdlab.store.export import export_query
from gdlab.store.records import PHASES, StoredRun
from gdlab.store.sqlite import DEFAULT_STORE_PATH, RunStore

__all__ = ["DEFAULT_STORE_PATH", "PHASES", "RunStore", "StoredRun", "export_query"]

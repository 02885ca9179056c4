"""A study's report from its store: what ``gdlab report DB`` and the end of ``gdlab compare`` write.
Needs no torch (the report reads the store and draws with matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError
from gdlab.report.html import build_report
from gdlab.store import RunStore
from gdlab.study.metrics import Target
from gdlab.study.summary import summarize_study


def write_report(store: str | Path, study: str, out: str | Path, *, tensorboard: str | Path | None = None
                 ) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the report of ``study`` in ``store`` to ``out`` (report.html, summary.md, figures/);
    returns the paths written and the summary (per task: ranking, time-to-target, profiles).
    With ``tensorboard`` every run's history is also written there as TensorBoard event files
    (the paths then include ``tensorboard`` and ``tensorboard_runs``)."""
    with RunStore(str(store), create=False) as run_store:
        spec = run_store.study_spec(study)
        if spec is None:
            names = ", ".join(run_store.studies()) or "none"
            raise GdlabError(f"store '{store}' holds no study '{study}' (it has: {names}); give --study NAME")
        runs = run_store.runs(study=study)
    if not runs:
        raise GdlabError(f"study '{study}' has no finished runs in '{store}'; run gdlab compare first")
    targets = {t["name"]: Target(t["target_metric"], t["target_value"]) for t in spec["tasks"]}
    summary = summarize_study(runs, targets)
    paths = build_report(runs, summary, str(out))
    if tensorboard is not None:
        from gdlab.report.tensorboard import write_tensorboard

        paths.update(tensorboard=str(tensorboard), tensorboard_runs=str(write_tensorboard(runs, str(tensorboard))))
    return paths, summary

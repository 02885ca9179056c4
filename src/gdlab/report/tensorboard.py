"""Stored runs as TensorBoard event files, for users who live there (optional dependency)."""

from __future__ import annotations

import math
from pathlib import Path

from gdlab.errors import GdlabError
from gdlab.store import StoredRun

SCALARS = ("train_loss", "batch_loss", "grad_norm", "lr", "test_loss", "test_accuracy")


def write_tensorboard(runs: list[StoredRun], log_dir: str | Path) -> int:
    """Write one TensorBoard run per stored run under ``log_dir/<study>/<task>/<optimizer>/
    <phase>-<trial or seed>``: the history's scalars against the step, with the x measure in
    ``epochs`` also logged as a scalar. Returns the number of runs written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GdlabError(
            "--tensorboard needs the tensorboard package; install it with pip install gdlab[tensorboard]"
        ) from None
    root = Path(log_dir)
    for run in runs:
        tag = f"trial{run.trial}" if run.phase == "tune" else f"seed{run.seed}"
        writer = SummaryWriter(log_dir=str(root / run.study / run.task / run.optimizer / f"{run.phase}-{tag}"))
        try:
            for record in run.history:
                step = int(record["step"])
                for name in (*SCALARS, "epochs", "wall_time_s"):
                    value = record.get(name)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        writer.add_scalar(name, float(value), step)
        finally:
            writer.close()
    return len(runs)

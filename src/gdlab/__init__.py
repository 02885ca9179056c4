"""gdlab: exact full-batch gradient descent and its variants, numerical stability, fair comparisons.

The public API (loaded on first use, so that ``import gdlab`` stays light and the package's own
modules can import it for ``__version__``):

* :func:`train` a model on tensors, a Dataset, a torch Dataset or DataLoader, a task or a file;
* :func:`full_batch_grad` and :func:`sharpness`: the exact full-batch gradient and the top
  Hessian eigenvalues, also streamed from a DataLoader; :func:`run_sharpness` of a saved run;
* :func:`compare` a study (tasks x optimizers x learning rates x seeds) into a store and a
  report, :func:`write_report` from a store;
* :class:`RunConfig` (every run option), :class:`Dataset`, :class:`RunResult` (a finished run),
  :class:`GdlabError` (every user mistake, one line naming the fix).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "gdlab.api",
    "full_batch_grad": "gdlab.api",
    "sharpness": "gdlab.api",
    "run_sharpness": "gdlab.api",
    "compare": "gdlab.api",
    "write_report": "gdlab.report.study",
    "Sharpness": "gdlab.api",
    "StudyOutcome": "gdlab.api",
    "RunConfig": "gdlab.config",
    "Dataset": "gdlab.data.dataset",
    "RunResult": "gdlab.run",
    "GdlabError": "gdlab.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gdlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

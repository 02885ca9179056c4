"""One training run, from a validated RunConfig to its record: the one place where task, model,
loss, regulariser, update rule, sample schedule, step-size policy and diagnostics meet (the CLI,
the Python API, sweeps and studies all go through :func:`run`). It sits above ``engine`` and
``diagnostics`` in the dependency order.

* :mod:`~gdlab.run.build`: :func:`prepare` builds and checks everything before any step;
* :mod:`~gdlab.run.execute`: :func:`run` chooses the stepper and drives the one training loop
  (checkpoints, resume, deterministic mode);
* :mod:`~gdlab.run.record`: :class:`RunResult`, the run record's parts and environment;
* :mod:`~gdlab.run.io`: run directories (``run.json`` + ``params.pt``) saved and loaded.
"""

from gdlab.run.build import PreparedRun, prepare, resolve_device
from gdlab.run.execute import restore, run
from gdlab.run.io import check_output_dir, load_run, save_run
from gdlab.run.record import RunResult, make_result

__all__ = ["PreparedRun", "RunResult", "check_output_dir", "load_run", "make_result", "prepare", "resolve_device",
           "restore", "run", "save_run"]

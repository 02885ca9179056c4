"""The Python API: what a researcher types after ``import gdlab``.

    run = gdlab.train(model, (X, y), optimizer="nesterov", lr=0.1, steps=500)
    run.final["train_loss"], run.history, run.model
    grads = gdlab.full_batch_grad(model, loss_fn, loader)    # exact, memory bounded by a batch
    top = gdlab.sharpness(model, loss_fn, loader)             # top Hessian eigenvalue
    outcome = gdlab.compare("studies/default.yaml")           # a study, stored and reported

Data may be a task name (``"digits"``), a path (``.npz``, ``.csv``, an ``X.npy``/``y.npy``
folder, an MNIST or CIFAR-10 folder, a preset), tensors or arrays ``(X, y)`` or
``(X, y, X_test, y_test)``, a gdlab ``Dataset``, a torch ``Dataset`` or a ``DataLoader`` (see
:mod:`gdlab.data.sources`). A ``DataLoader`` is streamed batch by batch, by :func:`train` in
every regime (the run's regime and seed decide the sample order) as by the gradient and
sharpness functions; :func:`train` reads a torch Dataset's rows once into tensors. Options of
:func:`train` are the fields of :class:`gdlab.config.RunConfig` (the same names as the CLI
flags, with underscores), validated with the same one-line errors. The CLI calls these
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from gdlab.config import RunConfig
from gdlab.data import PRESETS, TASKS, Dataset
from gdlab.data.sources import DataObject, as_dataset
from gdlab.engine.objective import full_batch_loss_and_grad
from gdlab.engine.loop import Callback
from gdlab.errors import GdlabError
from gdlab.optim import get_loss
from gdlab.report.study import write_report
from gdlab.run import RunResult, check_output_dir, run, save_run

LossLike = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str
DEFAULT_LOADER_BATCH = 1024
# Names a newcomer types for a RunConfig field (some are the CLI's flag names).
OPTION_ALIASES = {"epochs": "max_epochs", "learning_rate": "lr", "optimizer_kwargs": "optimizer_params",
                  "batch": "batch_size"}


def _split_source(data: DataObject | str | Path) -> tuple[dict[str, Any], Dataset | None]:
    """Config fields for a named source (task, preset or path), or the in-memory Dataset."""
    if isinstance(data, Path):
        return {"data": str(data)}, None
    if isinstance(data, str):
        return ({"task": data} if data in TASKS or data in PRESETS else {"data": data}), None
    return {}, data


def train(model: nn.Module | str | None = None, data: DataObject | str | Path = "digits", *,
          test: DataObject = None, task_type: str | None = None, callbacks: Sequence[Callback] = (),
          out: str | Path | None = None, **options: Any) -> RunResult:
    """Train ``model`` on ``data`` and return the run: ``final``, ``history``, ``events``,
    ``diagnostics`` (the run record's parts, :meth:`RunResult.to_record` for the JSON) and the
    trained ``model``.

    model: an ``nn.Module`` (trained in place, cast to ``dtype``), a model spec such as
    ``"mlp:64-128-10:relu"``, or None for the task's default. data: see the module docstring;
    ``test`` adds a test set to in-memory data; ``task_type`` (``"classification"`` or
    ``"regression"``) overrides the inference from the targets' dtype. options: RunConfig fields
    (``optimizer``, ``lr``, ``regime``, ``batch_size``, ``steps``, ``max_epochs``, ``seed``,
    ``optimizer_params``, ...). ``out``: a directory to save ``run.json`` and ``params.pt`` in.
    Raises GdlabError (one line naming the problem and the fix) for every bad option or input,
    before any step.
    """
    fields, in_memory = _split_source(data)
    dataset = None if in_memory is None else as_dataset(in_memory, test=test, task_type=task_type)
    if dataset is not None:
        fields["task"] = dataset.name
    elif test is not None or task_type is not None:
        raise GdlabError("test and task_type apply to in-memory data; a task or file defines its own")
    module = model if isinstance(model, nn.Module) else None
    if model is not None and module is None:
        fields["model"] = model
    for name in options:
        if name in OPTION_ALIASES:
            raise GdlabError(f"unknown option {name!r} (did you mean {OPTION_ALIASES[name]!r}?); options are "
                             "RunConfig's fields")
    clash = sorted(set(fields) & set(options))
    if clash:
        raise GdlabError(f"option {clash[0]!r} repeats what the model or data argument gives; drop it")
    config = RunConfig.from_dict({**options, **fields})
    if out is not None:
        check_output_dir(out)
    result = run(config, callbacks=callbacks, model=module, data=dataset)
    if dataset is not None:
        result.environment["data"] = dataset.description if dataset.streamed else f"in memory: {dataset.description}"
    if out is not None:
        save_run(result, out)
    return result


def _loss(loss_fn: LossLike) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return get_loss(loss_fn) if isinstance(loss_fn, str) else loss_fn


def _xy(data: DataObject, batch_size: int | None) -> tuple[torch.Tensor | DataLoader, torch.Tensor | None]:
    """(X, y) tensors or (a DataLoader, None) for the gradient and Hessian functions."""
    if isinstance(data, DataLoader):
        return data, None
    if isinstance(data, Dataset):
        return data.X_train, data.y_train
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if isinstance(data, torch.utils.data.Dataset):
        return DataLoader(data, batch_size=batch_size or DEFAULT_LOADER_BATCH), None
    raise GdlabError(f"data must be a pair (X, y), a gdlab Dataset, a torch Dataset or a DataLoader; "
                     f"got {type(data).__name__}")


def full_batch_grad(model: nn.Module, loss_fn: LossLike, data: DataObject, *, chunk_size: int | None = None,
                    regularizer: Callable[[], torch.Tensor] | None = None,
                    accumulate: torch.dtype | None = None) -> list[torch.Tensor]:
    """The exact gradient of ``(1/N) sum_i loss_fn(model(x_i), y_i) + R`` over every row of
    ``data``, one tensor per trainable parameter (also left in ``p.grad``).

    ``loss_fn(out, y)`` returns the mean loss of a batch (``torch.nn.functional.cross_entropy``,
    or a gdlab loss name: ``"cross_entropy"``, ``"mse"`` (0.5 * squared error, summed over
    outputs), ``"bce"``). data: ``(X, y)`` tensors (X: (N, ...)) in chunks of ``chunk_size``
    rows (default: calibrated within a memory budget), a gdlab Dataset (its training rows), a
    DataLoader (its batches, streamed: memory bounded by one batch) or a torch Dataset (read in
    batches of ``chunk_size``, default 1024). ``accumulate``: the dtype chunks are summed in.
    """
    X, y = _xy(data, chunk_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GdlabError("the model has no trainable parameters; nothing to differentiate")
    full_batch_loss_and_grad(model, _loss(loss_fn), X, y, chunk_size=chunk_size, regularizer=regularizer,
                             params=params, accumulate=accumulate)
    return [p.grad for p in params]


@dataclass
class Sharpness:
    """Top Hessian eigenvalue(s) of the full-batch objective: ``value`` (the largest), ``values``
    (the k largest, descending), ``hvps`` (Hessian-vector products used), ``converged``."""

    value: float
    values: list[float]
    hvps: int
    converged: bool

    def __float__(self) -> float:
        return self.value


def sharpness(model: nn.Module, loss_fn: LossLike, data: DataObject, *, k: int = 1, iters: int = 30,
              tol: float | None = 1e-4, chunk_size: int | None = None,
              regularizer: Callable[[], torch.Tensor] | None = None, seed: int = 0) -> Sharpness:
    """The top ``k`` eigenvalues of the Hessian of the full-batch objective at the model's current
    parameters (Lanczos on exact Hessian-vector products, at most ``iters`` of them), on the same
    data forms as :func:`full_batch_grad` (a DataLoader is streamed once per product). GD with
    step lr on a quadratic is stable iff lr < 2 / sharpness. The model's mode (train/eval),
    parameters, gradients and buffers are left as they were."""
    from gdlab.diagnostics.hessian import HessianOperator, lanczos

    X, y = _xy(data, chunk_size)
    op = HessianOperator(model, _loss(loss_fn), X, y, chunk_size=chunk_size, regularizer=regularizer)
    result = lanczos(op, k=k, iters=iters, tol=tol, seed=seed)
    values = [float(v) for v in result.values]
    return Sharpness(value=values[0], values=values, hvps=result.hvps, converged=bool(result.converged))


def run_sharpness(run_dir: str | Path, *, k: int = 3, iters: int = 50, trace: bool = False) -> dict[str, Any]:
    """The sharpness of a saved run (``gdlab train --out DIR``) at its trained parameters, beside
    its stability threshold: top ``k`` Hessian eigenvalues (Lanczos, ``iters`` products), 2/lr,
    2/sharpness, which side of the threshold GD at the run's lr is on, and with ``trace`` a
    Hutchinson estimate of the Hessian trace. What ``gdlab sharpness DIR --json`` prints."""
    from gdlab.diagnostics.hessian import HessianOperator, hutchinson_trace, lanczos
    from gdlab.diagnostics.summary import stability_side
    from gdlab.run import load_run

    if k < 1 or iters < max(2, k):
        raise GdlabError(f"--k must be >= 1 and --iters >= max(2, k); got k={k}, iters={iters}")
    prepared = load_run(run_dir)
    model, data, config = prepared.model, prepared.data, prepared.config
    model.train(False)
    op = HessianOperator(model, prepared.loss_fn, data.X_train, data.y_train, chunk_size=prepared.chunk_size,
                         regularizer=prepared.regularizer)
    eig = lanczos(op, k=k, iters=iters, seed=config.seed)
    estimate = hutchinson_trace(op, samples=50, seed=config.seed) if trace else None
    top = eig.values[0]
    return {
        "run": str(run_dir), "model": config.model, "data": config.data or config.task, "parameters": op.dim,
        "lr": config.lr, "two_over_lr": 2.0 / config.lr, "top_eigenvalues": eig.values, "sharpness": top,
        "two_over_sharpness": (2.0 / top) if top > 0 else None, "side": stability_side(top, config.lr),
        "hvps": eig.hvps,
        "trace": None if estimate is None else {"estimate": estimate.estimate, "stderr": estimate.stderr},
    }


@dataclass
class StudyOutcome:
    """A finished study: its name, the store holding every run, the report's files (None when no
    report was written) and the per-task summary the report shows."""

    name: str
    store: str
    report: dict[str, str] | None
    summary: dict[str, Any] | None


def compare(study: str | Path | dict[str, Any], *, store: str | Path | None = None,
            workers: int | None = None, out: str | Path | None = "report",
            on_progress: Callable[[int, int], None] | None = None) -> StudyOutcome:
    """Run (or resume) a study: a study file's path or the same content as a mapping. Every run is
    stored once in ``store`` (default: the study's ``store``, else ``runs/gdlab.db``); a stored run
    is not run again. With ``out`` (default ``report/``, None for none) the report is written
    there. ``on_progress(stored, total)`` is called as runs finish."""
    from gdlab.store import DEFAULT_STORE_PATH
    from gdlab.study.execute import run_study
    from gdlab.study.spec import load_study, parse_study

    spec = parse_study(study, source="study") if isinstance(study, dict) else load_study(study)
    if workers is not None and workers < 1:
        raise GdlabError(f"workers must be >= 1, got {workers}")
    store_path = str(store or spec.store or DEFAULT_STORE_PATH)
    run_study(spec, store_path, workers=workers or spec.workers, on_progress=on_progress, check=True)
    paths = summary = None
    if out is not None:
        paths, summary = write_report(store_path, spec.name, out)
    return StudyOutcome(name=spec.name, store=store_path, report=paths, summary=summary)

"""The training loop: gradient, update, accounting, stopping rules and callbacks.

Accounting conventions (one record per logged step, see DESIGN.md "The run record"):

* ``step`` s is the number of updates applied to reach the parameters theta_s being measured.
* ``epochs`` = gradient evaluations spent to reach theta_s = rows whose gradient was computed / N.
* ``wall_time_s`` = training time spent to reach theta_s: gradients and updates only. Evaluation
  of test metrics and of the full training objective for minibatch regimes is measurement, not
  training, and is excluded so regimes compare fairly.
* ``batch_loss`` is the loss of the rows the step used; ``train_loss`` is the full-batch
  objective, known every step in regime ``full`` and every ``eval_every`` steps otherwise
  (evaluated with ``model.eval()``, like the test metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gdlab.data.dataset import Dataset
from gdlab.engine.gradient import LossFn, evaluate, full_batch_loss, full_batch_loss_and_grad, gradient_norm
from gdlab.engine.regimes import SampleSchedule
from gdlab.optim.linesearch import ArmijoLineSearch

STATUSES = ("completed", "diverged", "stopped", "time_budget", "target_reached")


@dataclass
class StopRules:
    """When a run ends. ``None`` disables a rule. Units: epochs = gradient evaluations / N,
    seconds of training time."""

    max_steps: int | None = None
    max_epochs: float | None = None
    loss_tol: float | None = None
    grad_tol: float | None = None
    time_budget_s: float | None = None
    divergence_factor: float = 1e6


@dataclass
class StepInfo:
    """What a callback sees after each update."""

    step: int
    epochs: float
    wall_time_s: float
    batch_loss: float
    grad_norm: float
    lr: float


class Callback:
    """Hooks called by the loop; override what you need."""

    def on_step(self, info: StepInfo) -> None:
        """After every update."""

    def on_log(self, record: dict[str, Any]) -> None:
        """After each history record is written."""


@dataclass
class LoopOutcome:
    """What the loop returns: the final record, the history and the events."""

    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _set_mode(model: nn.Module, train: bool) -> None:
    model.train(train)


def train_loop(
    model: nn.Module,
    data: Dataset,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    schedule: SampleSchedule,
    stop: StopRules,
    *,
    regularizer: Callable[[], torch.Tensor] | None = None,
    chunk_size: int | None = None,
    eval_every: int = 10,
    log_every: int = 1,
    layer_mode: str = "train",
    callbacks: Sequence[Callback] = (),
) -> LoopOutcome:
    """Train ``model`` on ``data`` (tensors already on the model's device) until a stop rule fires.

    Each step: indices from ``schedule``, exact loss and gradient of those rows by
    :func:`full_batch_loss_and_grad` (chunked), then ``optimizer.step()`` (or the line search's
    ``step(closure)``). Returns the final record, the history and the events.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    X, y = data.X_train, data.y_train
    n = data.n_train
    classification = data.task_type == "classification"
    line_search = isinstance(optimizer, ArmijoLineSearch)
    train_mode = layer_mode == "train"

    history: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    samples = 0
    train_time = 0.0
    step = 0
    first_loss: float | None = None
    status, reason = "completed", "max_steps"

    def objective() -> float:
        _set_mode(model, False)
        value = full_batch_loss(model, loss_fn, X, y, chunk_size=chunk_size, regularizer=regularizer)
        _set_mode(model, train_mode)
        return value

    def test_metrics() -> tuple[float | None, float | None]:
        _set_mode(model, False)
        out = evaluate(
            model, loss_fn, data.X_test, data.y_test, classification=classification, chunk_size=chunk_size
        )
        _set_mode(model, train_mode)
        return out

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        for cb in callbacks:
            cb.on_log(record)

    _set_mode(model, train_mode)
    try:
        while True:
            if stop.max_steps is not None and step >= stop.max_steps:
                status, reason = "completed", "max_steps"
                break
            if stop.max_epochs is not None and samples >= stop.max_epochs * n - 1e-9:
                status, reason = "completed", "max_epochs"
                break
            if stop.time_budget_s is not None and train_time >= stop.time_budget_s:
                status, reason = "time_budget", "time_budget"
                break

            epochs_before, time_before = samples / n, train_time
            evaluating = step % eval_every == 0
            if evaluating:
                eval_train = None if schedule.is_full else objective()
                test_loss, test_acc = test_metrics()
                if eval_train is not None and stop.loss_tol is not None and eval_train <= stop.loss_tol:
                    log({"step": step, "epochs": epochs_before, "wall_time_s": time_before,
                         "batch_loss": None, "train_loss": eval_train, "grad_norm": None,
                         "lr": float(optimizer.param_groups[0]["lr"]),
                         "test_loss": test_loss, "test_accuracy": test_acc})
                    status, reason = "target_reached", "loss_tol"
                    break

            t0 = time.perf_counter()
            idx = schedule.next_indices()
            if idx is None:
                Xb, yb = X, y
            else:
                idx = idx.to(X.device)
                Xb, yb = X[idx], y[idx]
            res = full_batch_loss_and_grad(
                model, loss_fn, Xb, yb, chunk_size=chunk_size, regularizer=regularizer, params=params
            )
            gnorm = gradient_norm(params)
            lr = float(optimizer.param_groups[0]["lr"])
            if not (math.isfinite(res.loss) and math.isfinite(gnorm)):
                train_time += time.perf_counter() - t0
                events.append(
                    {"step": step, "kind": "nonfinite",
                     "detail": f"loss={res.loss}, grad_norm={gnorm} at lr={lr:g}; run stopped as diverged"}
                )
                status, reason = "diverged", "nonfinite"
                break
            if first_loss is None:
                first_loss = res.loss
            elif res.loss > stop.divergence_factor * max(abs(first_loss), 1e-12):
                train_time += time.perf_counter() - t0
                events.append(
                    {"step": step, "kind": "exploding",
                     "detail": f"loss {res.loss:.4g} exceeds {stop.divergence_factor:g} x the "
                               f"initial loss {first_loss:.4g}; run stopped as diverged"}
                )
                status, reason = "diverged", "loss_exploded"
                break

            record: dict[str, Any] = {
                "step": step, "epochs": epochs_before, "wall_time_s": time_before,
                "batch_loss": res.loss, "train_loss": res.loss if schedule.is_full else None,
                "grad_norm": gnorm, "lr": lr, "test_loss": None, "test_accuracy": None,
            }
            if evaluating:
                if not schedule.is_full:
                    record["train_loss"] = eval_train
                record["test_loss"], record["test_accuracy"] = test_loss, test_acc
            if schedule.is_full:
                if stop.loss_tol is not None and res.loss <= stop.loss_tol:
                    status, reason = "target_reached", "loss_tol"
                elif stop.grad_tol is not None and gnorm <= stop.grad_tol:
                    status, reason = "stopped", "grad_tol"
            if reason in ("loss_tol", "grad_tol"):
                train_time += time.perf_counter() - t0
                log(record)
                break

            if line_search:
                def closure() -> float:
                    return full_batch_loss(
                        model, loss_fn, Xb, yb, chunk_size=chunk_size, regularizer=regularizer
                    )

                optimizer.step(closure, loss=res.loss)
            else:
                optimizer.step()
            samples += res.num_samples
            step += 1
            train_time += time.perf_counter() - t0

            if evaluating or (step - 1) % log_every == 0:
                log(record)
            info = StepInfo(step, samples / n, train_time, res.loss, gnorm, lr)
            for cb in callbacks:
                cb.on_step(info)
    except KeyboardInterrupt:
        status, reason = "stopped", "interrupted"
        events.append({"step": step, "kind": "interrupted", "detail": "stopped by the user (Ctrl-C)"})

    final = final_record(
        model, data, loss_fn, params, regularizer=regularizer, chunk_size=chunk_size,
        classification=classification, train_mode=train_mode,
    )
    final.update(
        step=step, epochs=samples / n, wall_time_s=train_time, status=status, stop_reason=reason,
        gradient_evaluations=samples,
        loss_evaluations=optimizer.state_info["total_evaluations"] if line_search else None,
    )
    if not history or history[-1]["step"] != step:
        history.append(
            {"step": step, "epochs": samples / n, "wall_time_s": train_time,
             "batch_loss": None, "train_loss": final["train_loss"], "grad_norm": final["grad_norm"],
             "lr": float(optimizer.param_groups[0]["lr"]),
             "test_loss": final["test_loss"], "test_accuracy": final["test_accuracy"]}
        )
    _set_mode(model, train_mode)
    return LoopOutcome(final=final, history=history, events=events)


def final_record(
    model: nn.Module,
    data: Dataset,
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    *,
    regularizer: Callable[[], torch.Tensor] | None,
    chunk_size: int | None,
    classification: bool,
    train_mode: bool,
) -> dict[str, Any]:
    """Train objective, full-batch gradient norm and test metrics at the current parameters
    (evaluated with ``model.eval()``)."""
    _set_mode(model, False)
    res = full_batch_loss_and_grad(
        model, loss_fn, data.X_train, data.y_train, chunk_size=chunk_size, regularizer=regularizer,
        params=params,
    )
    gnorm = gradient_norm(params)
    for p in params:
        p.grad = None
    test_loss, test_acc = evaluate(
        model, loss_fn, data.X_test, data.y_test, classification=classification, chunk_size=chunk_size
    )
    train_acc = None
    if classification:
        _, train_acc = evaluate(
            model, loss_fn, data.X_train, data.y_train, classification=True, chunk_size=chunk_size
        )
    _set_mode(model, train_mode)
    return {
        "train_loss": res.loss, "train_accuracy": train_acc, "grad_norm": gnorm,
        "test_loss": test_loss, "test_accuracy": test_acc,
    }

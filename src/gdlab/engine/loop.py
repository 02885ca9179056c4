"""The training loop: gradient, guard, clipping, update, schedule, accounting, stopping rules.

Accounting conventions (one record per logged step, see DESIGN.md "The run record"):

* ``step`` s is the number of updates applied to reach the parameters theta_s being measured
  (after a rollback the run returns to an earlier s, so a step number may appear twice).
* ``epochs`` = gradient evaluations spent to reach theta_s = rows whose gradient was computed / N,
  including gradients wasted on steps that were rolled back.
* ``wall_time_s`` = training time spent to reach theta_s: gradients, guard, clipping and updates.
  Test metrics, the full training objective for minibatch regimes and diagnostics callbacks are
  measurement, not training, and are excluded so regimes compare fairly.
* ``batch_loss`` is the loss of the rows the step used; ``train_loss`` is the full-batch
  objective, known every step in regime ``full`` and every ``eval_every`` steps otherwise
  (evaluated with ``model.eval()``, like the test metrics).

Non-finite guard (``GuardOptions.policy``): when the loss or the gradient at a step is NaN/Inf, or
the loss exceeds ``divergence_factor`` times the initial loss,

* ``rollback`` restores the parameters, optimizer and scheduler state saved before the previous
  update, multiplies the learning rate by ``lr_factor`` and goes on (at most ``max_rollbacks``
  times, then it stops as ``diverged``);
* ``stop`` restores the last good parameters and stops with status ``diverged``;
* ``raise`` raises :class:`NonFiniteError` (parameters are left as they are).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gdlab.data.dataset import Dataset
from gdlab.distributed import Shard, agree_max, all_reduce_sum
from gdlab.engine.gradient import (
    FullBatchObjective,
    LossFn,
    evaluate,
    full_batch_loss,
    full_batch_loss_and_grad,
    gradient_norm,
)
from gdlab.engine.regimes import SampleSchedule
from gdlab.optim.clipping import clip_gradients
from gdlab.optim.linesearch import ArmijoLineSearch


class NonFiniteError(RuntimeError):
    """Raised by guard policy ``raise`` when the loss or gradient stops being finite."""


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
class GuardOptions:
    """Non-finite guard and gradient clipping (see the module docstring)."""

    policy: str = "rollback"
    lr_factor: float = 0.5
    max_rollbacks: int = 10
    clip_norm: float | None = None
    clip_value: float | None = None


@dataclass
class StepInfo:
    """What a progress callback sees after each update."""

    step: int
    epochs: float
    wall_time_s: float
    batch_loss: float
    grad_norm: float
    lr: float


@dataclass
class StepContext:
    """What a diagnostics callback sees: the model at theta_s with its gradient in ``p.grad``
    (``on_gradient``) or just after the update (``on_update``), the full-batch training objective,
    and the run's event list and diagnostics series to write into."""

    step: int
    model: nn.Module
    params: list[torch.Tensor]
    batch_loss: float
    grad_norm: float
    lr: float
    objective: FullBatchObjective
    events: list[dict[str, Any]]
    diagnostics: dict[str, list[dict[str, Any]]]
    train_mode: bool

    def event(self, kind: str, detail: str, **extra: Any) -> None:
        """Append an event at this step."""
        self.events.append({"step": self.step, "kind": kind, "detail": detail, **extra})

    def record(self, name: str, value: float | None) -> None:
        """Append ``{step, value}`` to the diagnostics series ``name``."""
        self.diagnostics.setdefault(name, []).append({"step": self.step, "value": value})


class Callback:
    """Hooks called by the loop; override what you need. Time spent in ``on_gradient`` and
    ``on_update`` is not counted as training time."""

    def on_gradient(self, ctx: StepContext) -> None:
        """After the gradient at theta_s is computed and found finite, before clipping and update."""

    def on_update(self, ctx: StepContext) -> None:
        """Right after the update theta_s -> theta_{s+1} (``ctx.step`` is still s)."""

    def on_step(self, info: StepInfo) -> None:
        """After every update (for progress display)."""

    def on_log(self, record: dict[str, Any]) -> None:
        """After each history record is written."""

    def on_end(self, final: dict[str, Any], diagnostics: dict[str, list[dict[str, Any]]]) -> None:
        """Once, after the final record is computed."""


@dataclass
class CheckpointHook:
    """Save the loop state every ``every`` updates through ``save(state)``."""

    every: int
    save: Callable[[dict[str, Any]], None]


@dataclass
class LoopOutcome:
    """What the loop returns: the final record, the history, the events and diagnostics series."""

    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Snapshot:
    """Parameters and buffers (and, for rollback, optimizer and scheduler state) at one step.

    Policy ``stop`` only needs the parameters back, so it skips the optimizer and scheduler state.
    A model whose state is exactly its trainable ``params`` (no buffers, nothing frozen or tied)
    is saved and restored by one fused copy of ``params``, without building its state dict,
    which costs more than the copy on small stochastic steps."""

    def __init__(self, with_optimizer: bool, params: Sequence[torch.Tensor]) -> None:
        self.with_optimizer = with_optimizer
        self.params = list(params)
        self.step = -1
        self.only_params: bool | None = None
        self.param_copies: list[torch.Tensor] | None = None
        self.model_state: dict[str, torch.Tensor] | None = None
        self.optimizer_state: dict[str, Any] | None = None
        self.scheduler_state: dict[str, Any] | None = None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if self.only_params is None:
            self.only_params = _state_is_params(model, self.params)
        if self.only_params:
            self._save_params()
        else:
            self._save_state(model)
        if self.with_optimizer:
            self.optimizer_state = _copy_state(optimizer.state_dict())
            self.scheduler_state = _copy_state(scheduler.state_dict()) if scheduler is not None else None
        self.step = step

    @torch.no_grad()
    def _save_params(self) -> None:
        if self.param_copies is None:
            self.param_copies = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.param_copies, self.params)

    def _save_state(self, model: nn.Module) -> None:
        state = model.state_dict()
        if self.model_state is None or self.model_state.keys() != state.keys():
            self.model_state = {k: v.detach().clone() for k, v in state.items()}
        else:
            torch._foreach_copy_(list(self.model_state.values()), list(state.values()))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if self.only_params:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.param_copies)
        else:
            model.load_state_dict(self.model_state)
        if self.with_optimizer:
            optimizer.load_state_dict(self.optimizer_state)
            if scheduler is not None and self.scheduler_state is not None:
                scheduler.load_state_dict(self.scheduler_state)


def _state_is_params(model: nn.Module, params: Sequence[torch.Tensor]) -> bool:
    """Whether ``model.state_dict()`` holds exactly the tensors ``params``, in any order."""
    state = model.state_dict(keep_vars=True)
    return len(state) == len(params) and {id(v) for v in state.values()} == {id(p) for p in params}


_IMMUTABLE = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _copy_state(obj: Any) -> Any:
    """A deep copy of an optimizer or scheduler state dict: dicts, lists and tuples rebuilt,
    tensors cloned, immutable values shared, anything else through ``copy.deepcopy``. The same
    values as ``copy.deepcopy`` (only tensors shared inside ``obj`` come out as separate copies)
    at a fraction of its cost on a per-step snapshot."""
    kind = type(obj)
    if kind is torch.Tensor and not obj.requires_grad:
        return obj.clone()
    if kind is dict:
        return {k: _copy_state(v) for k, v in obj.items()}
    if kind is list:
        return [_copy_state(v) for v in obj]
    if kind is tuple:
        return tuple(_copy_state(v) for v in obj)
    if isinstance(obj, _IMMUTABLE):
        return obj
    return copy.deepcopy(obj)


def _gradient_norm_if_needed(params: Sequence[torch.Tensor], needed: bool) -> float | None:
    """:func:`gradient_norm` of ``params`` when its value is ``needed`` or when it may not be
    finite; None when a cheaper check (one norm per tensor in its own dtype) proves it finite.

    That check proves it when the per-tensor norms sum to less than 1e150: every element is then
    finite, and so is the float64 norm (a float64 sum of squares overflows only above 1e308)."""
    grads = [p.grad for p in params if p.grad is not None]
    if needed or len({g.dtype for g in grads}) > 1:
        return gradient_norm(params)
    if not grads or float(torch.stack(torch._foreach_norm(grads)).sum()) < 1e150:
        return None
    return gradient_norm(params)


def _next_batch(
    schedule: SampleSchedule, X: torch.Tensor, y: torch.Tensor, n: int, shard: Shard | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The inputs and targets of the next step's rows and their count over all ranks: all ``n``
    rows (full), a slice (one row: no index tensor, no gather), else a gather of the schedule's
    indices (across processes filtered to this rank's rows)."""
    if schedule.is_full:
        schedule.next_indices()
        return X, y, n
    if schedule.batch_size == 1 and shard is None:
        i = schedule.next_row()
        return X[i : i + 1], y[i : i + 1], 1
    idx = schedule.next_indices()
    rows = int(idx.numel())
    if shard is not None:
        mine = (idx >= shard.train_start) & (idx < shard.train_stop)
        idx = idx[mine] - shard.train_start
    idx = idx.to(X.device)
    return X[idx], y[idx], rows


def _scale_lr(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Multiply the learning rate by ``factor`` now and for the rest of the schedule."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "t_prev" in group:
            group["t_prev"] *= factor
    pending = [scheduler] if scheduler is not None else []
    while pending:
        sched = pending.pop()
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in optimizer.param_groups]
        pending.extend(getattr(sched, "_schedulers", []))


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
    scheduler: Any = None,
    guard: GuardOptions | None = None,
    shard: Shard | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: dict[str, Any] | None = None,
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> LoopOutcome:
    """Train ``model`` on ``data`` (tensors already on the model's device) until a stop rule fires.

    Each step: indices from ``schedule``; exact loss and gradient of those rows by
    :func:`full_batch_loss_and_grad` (chunked); the non-finite guard; diagnostics callbacks;
    clipping; ``optimizer.step()`` (or the line search's ``step(closure)``); ``scheduler.step()``.
    Returns the final record, the history, the events and the diagnostics series.

    ``checkpoint.save(loop_state)`` is called every ``checkpoint.every`` updates with the loop's
    counters and records; passing such a state back as ``resume`` (with the model, optimizer,
    scheduler, sample schedule and RNG restored by the caller) continues the run exactly.

    With ``shard`` (a torch.distributed job) ``data`` holds this rank's rows only; gradients,
    losses and counts are summed over ranks (see :mod:`gdlab.distributed`), so every rank takes
    the single-process steps. ``autocast`` and ``accumulate`` set the precision of every
    gradient and loss evaluation (see :func:`full_batch_loss_and_grad`).
    """
    guard = guard or GuardOptions()
    precision: dict[str, Any] = {"autocast": autocast, "accumulate": accumulate}
    params = [p for p in model.parameters() if p.requires_grad]
    X, y = data.X_train, data.y_train
    n = shard.n_train if shard else data.n_train
    n_test = shard.n_test if shard else data.n_test
    reduce = all_reduce_sum if shard else None
    classification = data.task_type == "classification"
    line_search = isinstance(optimizer, ArmijoLineSearch)
    train_mode = layer_mode == "train"
    full_objective = FullBatchObjective(model, loss_fn, X, y, chunk_size=chunk_size,
                                        regularizer=regularizer, params=params, **precision)

    resumed = resume or {}
    history: list[dict[str, Any]] = list(resumed.get("history", []))
    events: list[dict[str, Any]] = list(resumed.get("events", []))
    diagnostics: dict[str, list[dict[str, Any]]] = dict(resumed.get("diagnostics", {}))
    samples = int(resumed.get("samples", 0))
    train_time = float(resumed.get("train_time", 0.0))
    step = int(resumed.get("step", 0))
    first_loss: float | None = resumed.get("first_loss")
    status, reason = "completed", "max_steps"
    snapshot = (_Snapshot(with_optimizer=guard.policy == "rollback", params=params)
                if guard.policy in ("rollback", "stop") else None)
    rollbacks = int(resumed.get("rollbacks", 0))
    clip_factors: list[float] = list(resumed.get("clip_factors", []))

    def loop_state() -> dict[str, Any]:
        """Everything the loop needs to continue exactly where it is (for checkpoints)."""
        return {"step": step, "samples": samples, "train_time": train_time, "first_loss": first_loss,
                "rollbacks": rollbacks, "clip_factors": list(clip_factors), "history": list(history),
                "events": list(events), "diagnostics": {k: list(v) for k, v in diagnostics.items()}}

    def measured(fn: Callable[[], Any]) -> Any:
        model.train(False)
        try:
            return fn()
        finally:
            model.train(train_mode)

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        for cb in callbacks:
            cb.on_log(record)

    def context(batch_loss: float, gnorm: float, lr: float) -> StepContext:
        return StepContext(step, model, params, batch_loss, gnorm, lr, full_objective, events,
                           diagnostics, train_mode)

    def step_record() -> dict[str, Any]:
        """The history record of the current step (built only for the steps that are logged)."""
        record: dict[str, Any] = {
            "step": step, "epochs": epochs_before, "wall_time_s": time_before,
            "batch_loss": res.loss, "train_loss": res.loss if schedule.is_full else None,
            "grad_norm": gnorm, "lr": lr, "test_loss": None, "test_accuracy": None,
        }
        if evaluating:
            if not schedule.is_full:
                record["train_loss"] = eval_train
            record["test_loss"], record["test_accuracy"] = test_loss, test_acc
        if clip_factor is not None:
            record["clip_factor"] = clip_factor
        return record

    model.train(train_mode)
    try:
        while True:
            if stop.max_steps is not None and step >= stop.max_steps:
                status, reason = "completed", "max_steps"
                break
            if stop.max_epochs is not None and samples >= stop.max_epochs * n - 1e-9:
                status, reason = "completed", "max_epochs"
                break
            if stop.time_budget_s is not None and (
                agree_max(train_time) if shard else train_time
            ) >= stop.time_budget_s:
                status, reason = "time_budget", "time_budget"
                break

            epochs_before, time_before = samples / n, train_time
            evaluating = step % eval_every == 0
            if evaluating:
                eval_train = None if schedule.is_full else measured(
                    lambda: full_batch_loss(model, loss_fn, X, y, chunk_size=chunk_size,
                                            regularizer=regularizer, total_rows=n, reduce=reduce, **precision))
                test_loss, test_acc = measured(lambda: evaluate(
                    model, loss_fn, data.X_test, data.y_test, classification=classification,
                    chunk_size=chunk_size, total_rows=n_test, reduce=reduce, **precision))
                if first_loss is None and eval_train is not None and math.isfinite(eval_train):
                    # the divergence reference is the full objective, not one (maybe lucky) batch
                    first_loss = eval_train
                if eval_train is not None and stop.loss_tol is not None and eval_train <= stop.loss_tol:
                    log({"step": step, "epochs": epochs_before, "wall_time_s": time_before,
                         "batch_loss": None, "train_loss": eval_train, "grad_norm": None,
                         "lr": float(optimizer.param_groups[0]["lr"]),
                         "test_loss": test_loss, "test_accuracy": test_acc})
                    status, reason = "target_reached", "loss_tol"
                    break

            t0 = time.perf_counter()
            Xb, yb, rows = _next_batch(schedule, X, y, n, shard)
            res = full_batch_loss_and_grad(
                model, loss_fn, Xb, yb, chunk_size=chunk_size, regularizer=regularizer, params=params,
                total_rows=rows, reduce=reduce, **precision,
            )
            samples += res.num_samples
            logged = evaluating or step % log_every == 0
            # the value is needed by a record, a callback, grad_tol or a non-finite loss's message;
            # otherwise only its finiteness, for the guard
            gnorm = _gradient_norm_if_needed(params, logged or bool(callbacks) or not math.isfinite(res.loss)
                                             or (schedule.is_full and stop.grad_tol is not None))
            lr = float(optimizer.param_groups[0]["lr"])

            problem = None
            if not (math.isfinite(res.loss) and (gnorm is None or math.isfinite(gnorm))):
                problem = ("nonfinite", f"loss={res.loss:.4g}, gradient norm={gnorm:.4g} at lr={lr:g}")
            elif first_loss is not None and res.loss > stop.divergence_factor * max(abs(first_loss), 1e-12):
                problem = ("loss_exploding", f"loss {res.loss:.4g} exceeds {stop.divergence_factor:g} x "
                                        f"the initial loss {first_loss:.4g} at lr={lr:g}")
            if problem is not None:
                kind, detail = problem
                if guard.policy == "raise":
                    raise NonFiniteError(f"step {step}: {detail}")
                can_roll_back = snapshot is not None and snapshot.step >= 0
                if guard.policy == "rollback" and can_roll_back and rollbacks < guard.max_rollbacks:
                    snapshot.restore(model, optimizer, scheduler)
                    _scale_lr(optimizer, scheduler, guard.lr_factor)
                    rollbacks += 1
                    new_lr = float(optimizer.param_groups[0]["lr"])
                    events.append({"step": step, "kind": kind, "detail": detail})
                    events.append({"step": snapshot.step, "kind": "rollback",
                                   "detail": f"restored step {snapshot.step} and cut lr to {new_lr:g} "
                                             f"(rollback {rollbacks} of at most {guard.max_rollbacks})"})
                    step = snapshot.step
                    train_time += time.perf_counter() - t0
                    continue
                bad_step = step
                if can_roll_back:
                    snapshot.restore(model, optimizer, scheduler)
                    step = snapshot.step
                    detail += f"; restored the last good parameters (step {step})"
                train_time += time.perf_counter() - t0
                events.append({"step": bad_step, "kind": kind, "detail": detail + "; run stopped as diverged"})
                status, reason = "diverged", kind
                break
            if first_loss is None:
                first_loss = res.loss

            clip_factor = None
            if schedule.is_full:
                if stop.loss_tol is not None and res.loss <= stop.loss_tol:
                    status, reason = "target_reached", "loss_tol"
                elif stop.grad_tol is not None and gnorm <= stop.grad_tol:
                    status, reason = "stopped", "grad_tol"
            if reason in ("loss_tol", "grad_tol"):
                if gnorm is None:
                    gnorm = gradient_norm(params)
                train_time += time.perf_counter() - t0
                log(step_record())
                break

            if callbacks:
                t_cb = time.perf_counter()
                ctx = context(res.loss, gnorm, lr)
                for cb in callbacks:
                    cb.on_gradient(ctx)
                model.train(train_mode)
                t0 += time.perf_counter() - t_cb
            if snapshot is not None:
                snapshot.save(step, model, optimizer, scheduler)
            if guard.clip_norm is not None or guard.clip_value is not None:
                clip = clip_gradients(params, max_norm=guard.clip_norm, max_value=guard.clip_value)
                if clip.clipped:
                    if not clip_factors:
                        events.append({"step": step, "kind": "clip",
                                       "detail": f"first clipped step: gradient norm "
                                                 f"{clip.norm_before:.4g} -> {clip.norm_after:.4g}"})
                    clip_factors.append(clip.factor)
                clip_factor = clip.factor

            if line_search:
                def closure() -> float:
                    return full_batch_loss(model, loss_fn, Xb, yb, chunk_size=chunk_size,
                                           regularizer=regularizer, total_rows=rows, reduce=reduce, **precision)

                optimizer.step(closure, loss=res.loss)
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            train_time += time.perf_counter() - t0

            if callbacks:
                ctx = context(res.loss, gnorm, lr)
                for cb in callbacks:
                    cb.on_update(ctx)
                model.train(train_mode)
            if logged:
                log(step_record())
            step += 1
            if callbacks:
                info = StepInfo(step, samples / n, train_time, res.loss, gnorm, lr)
                for cb in callbacks:
                    cb.on_step(info)
            if checkpoint is not None and step % checkpoint.every == 0:
                checkpoint.save(loop_state())
    except KeyboardInterrupt:
        status, reason = "stopped", "interrupted"
        events.append({"step": step, "kind": "interrupted", "detail": "stopped by the user (Ctrl-C)"})
    if checkpoint is not None:
        checkpoint.save(loop_state())

    return finish(
        model, data, loss_fn, params, regularizer=regularizer, chunk_size=chunk_size,
        train_mode=train_mode, shard=shard, step=step, samples=samples, train_time=train_time,
        status=status, reason=reason, rollbacks=rollbacks,
        final_lr=float(optimizer.param_groups[0]["lr"]),
        loss_evaluations=optimizer.state_info["total_evaluations"] if line_search else None,
        clip_factors=clip_factors if guard.clip_norm is not None or guard.clip_value is not None else None,
        history=history, events=events, diagnostics=diagnostics, callbacks=callbacks, **precision,
    )


def finish(
    model: nn.Module,
    data: Dataset,
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    *,
    regularizer: Callable[[], torch.Tensor] | None,
    chunk_size: int | None,
    train_mode: bool,
    shard: Shard | None,
    step: int,
    samples: int,
    train_time: float,
    status: str,
    reason: str,
    rollbacks: int,
    final_lr: float,
    loss_evaluations: int | None,
    clip_factors: list[float] | None,
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    diagnostics: dict[str, list[dict[str, Any]]],
    callbacks: Sequence[Callback],
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> LoopOutcome:
    """The end of a run: the final record at the model's current parameters (plus the loop's
    counters and the clipping summary when ``clip_factors`` is not None), a last history record
    when the last step was not logged, and the ``on_end`` callbacks."""
    n = shard.n_train if shard else data.n_train
    final = final_record(
        model, data, loss_fn, params, regularizer=regularizer, chunk_size=chunk_size,
        classification=data.task_type == "classification", train_mode=train_mode, shard=shard,
        autocast=autocast, accumulate=accumulate,
    )
    final.update(
        step=step, epochs=samples / n, wall_time_s=train_time, status=status, stop_reason=reason,
        gradient_evaluations=samples, loss_evaluations=loss_evaluations, rollbacks=rollbacks,
        final_lr=final_lr,
    )
    if clip_factors is not None:
        final["clipping"] = {
            "clipped_steps": len(clip_factors),
            "fraction": len(clip_factors) / max(1, step),
            "min_factor": min(clip_factors) if clip_factors else None,
            "median_factor": sorted(clip_factors)[len(clip_factors) // 2] if clip_factors else None,
        }
    if not history or history[-1]["step"] != step:
        history.append(
            {"step": step, "epochs": samples / n, "wall_time_s": train_time,
             "batch_loss": None, "train_loss": final["train_loss"], "grad_norm": final["grad_norm"],
             "lr": final_lr, "test_loss": final["test_loss"], "test_accuracy": final["test_accuracy"]}
        )
    for cb in callbacks:
        cb.on_end(final, diagnostics)
    model.train(train_mode)
    return LoopOutcome(final=final, history=history, events=events, diagnostics=diagnostics)


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
    shard: Shard | None = None,
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> dict[str, Any]:
    """Train objective, full-batch gradient norm and test metrics at the current parameters
    (evaluated with ``model.eval()``; summed over ranks with ``shard``; precision as in
    :func:`full_batch_loss_and_grad`)."""
    precision: dict[str, Any] = {"autocast": autocast, "accumulate": accumulate}
    reduce = all_reduce_sum if shard else None
    n_train = shard.n_train if shard else None
    n_test = shard.n_test if shard else None
    model.train(False)
    res = full_batch_loss_and_grad(
        model, loss_fn, data.X_train, data.y_train, chunk_size=chunk_size, regularizer=regularizer,
        params=params, total_rows=n_train, reduce=reduce, **precision,
    )
    gnorm = gradient_norm(params)
    for p in params:
        p.grad = None
    test_loss, test_acc = evaluate(
        model, loss_fn, data.X_test, data.y_test, classification=classification, chunk_size=chunk_size,
        total_rows=n_test, reduce=reduce, **precision,
    )
    train_acc = None
    if classification:
        _, train_acc = evaluate(
            model, loss_fn, data.X_train, data.y_train, classification=True, chunk_size=chunk_size,
            total_rows=n_train, reduce=reduce, **precision,
        )
    model.train(train_mode)
    return {
        "train_loss": res.loss, "train_accuracy": train_acc, "grad_norm": gnorm,
        "test_loss": test_loss, "test_accuracy": test_acc,
    }

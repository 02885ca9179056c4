"""The training loop: one loop for every stepper, owning everything a run records.

A *stepper* (:mod:`gdlab.engine.steppers`) owns the parameters and how they move: the eager
stepper (torch.optim on the model, any regime, any process count), the compiled one (blocks of
full-batch steps in one ``torch.compile`` graph) or a stacked lane (one of K copies trained as
one stacked model; :func:`train_lanes` runs the K loops in lockstep). The loop owns the rest,
once: accounting, stop rules, the non-finite guard, clipping events, history records, events,
callbacks, checkpoints and interruption. Any stepper therefore records a run the same way.

Accounting conventions (one record per logged step, see DESIGN.md "The run record"):

* ``step`` s is the number of updates applied to reach the parameters theta_s being measured
  (after a rollback the run returns to an earlier s, so a step number may appear twice).
* ``epochs`` = gradient evaluations spent to reach theta_s = rows whose gradient was computed / N,
  including gradients wasted on steps that were rolled back.
* ``wall_time_s`` = training time spent to reach theta_s: gradients, guard, clipping and updates.
  Test metrics, the full training objective for minibatch regimes and diagnostics callbacks are
  measurement, not training, and are excluded so regimes compare fairly. A step inside a compiled
  block is charged the block's time split evenly.
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

import inspect
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gdlab.data.dataset import Dataset
from gdlab.distributed import Shard, agree_max
from gdlab.engine.objective import FullBatchObjective, evaluate, gradient_norm
from gdlab.engine.steppers import Block, Stepper
from gdlab.errors import NonFiniteError


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

    def spent(self, step: int, samples: int, n: int) -> str | None:
        """``max_steps`` or ``max_epochs`` when that budget is used up after ``step`` updates
        whose gradients covered ``samples`` rows of ``n``, else None."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_epochs is not None and samples >= self.max_epochs * n - 1e-9:
            return "max_epochs"
        return None


@dataclass
class GuardOptions:
    """The non-finite guard (see the module docstring); clipping is the stepper's."""

    policy: str = "rollback"
    lr_factor: float = 0.5
    max_rollbacks: int = 10


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


def uses_gradients(callback: Callback) -> bool:
    """Whether ``callback`` looks at the model every step (``on_gradient``/``on_update``): only a
    stepper that ``exposes_gradients`` can serve it."""
    kind = type(callback)
    return kind.on_gradient is not Callback.on_gradient or kind.on_update is not Callback.on_update


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


def history_record(step: int, epochs: float, wall_time_s: float, batch_loss: float | None,
                   train_loss: float | None, grad_norm: float | None, lr: float,
                   tests: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """One history record (DESIGN.md, "The run record")."""
    return {"step": step, "epochs": epochs, "wall_time_s": wall_time_s, "batch_loss": batch_loss,
            "train_loss": train_loss, "grad_norm": grad_norm, "lr": lr,
            "test_loss": tests[0], "test_accuracy": tests[1]}


def clip_event(step: int, before: float, after: float) -> dict[str, Any]:
    """The event of a run's first clipped step (the run's ``final.clipping`` counts the rest)."""
    return {"step": step, "kind": "clip", "detail": f"first clipped step: gradient norm {before:.4g} -> {after:.4g}"}


def guard_problem(loss: float, gnorm: float, lr: float, first_loss: float | None,
                  divergence_factor: float) -> tuple[str, str] | None:
    """(kind, detail) when a step's loss or gradient norm trips the guard."""
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        return "nonfinite", f"loss={loss:.4g}, gradient norm={gnorm:.4g} at lr={lr:g}"
    if first_loss is not None and loss > divergence_factor * max(abs(first_loss), 1e-12):
        return "loss_exploding", (f"loss {loss:.4g} exceeds {divergence_factor:g} x the initial loss "
                                  f"{first_loss:.4g} at lr={lr:g}")
    return None


def clean(blk: Block, first_loss: float | None, stop: StopRules, full: bool) -> bool:
    """Whether no step of ``blk`` trips the guard (:func:`guard_problem`) or a tolerance rule:
    the common case, told by a few builtins over the block instead of a loop over its steps."""
    losses, gnorms = blk.losses, blk.grad_norms
    if first_loss is None or not (all(map(math.isfinite, losses)) and all(map(math.isfinite, gnorms))):
        return False
    if guard_problem(max(losses), max(gnorms), blk.lrs[0], first_loss, stop.divergence_factor) is not None:
        return False  # the worst loss of the block diverges
    return not full or ((stop.loss_tol is None or min(losses) > stop.loss_tol)
                        and (stop.grad_tol is None or min(gnorms) > stop.grad_tol))


def train_loop(stepper: Stepper, objective: FullBatchObjective, data: Dataset, stop: StopRules,
               **options: Any) -> LoopOutcome:
    """Train with ``stepper`` until a stop rule fires and return the final record, the history,
    the events and the diagnostics: :func:`loop_steps` (same arguments and keyword options) run
    to its end."""
    return drive(loop_steps(stepper, objective, data, stop, **options))


def drive(steps: Iterator[None]) -> LoopOutcome:
    """Run a :func:`loop_steps` generator to its end and return its outcome."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def train_lanes(runs: Sequence[Iterator[None]], advance: Callable[[], None]) -> list[LoopOutcome]:
    """Advance several :func:`loop_steps` generators in lockstep, one iteration each per round,
    calling ``advance()`` after every round (a stacked stepper commits the round's step of every
    copy there), until each has returned; their outcomes in order. Ctrl-C in one run stops all."""
    outcomes: list[LoopOutcome | None] = [None] * len(runs)
    alive = list(range(len(runs)))
    interrupted = False
    while alive:
        for k in list(alive):
            try:
                if interrupted and inspect.getgeneratorstate(runs[k]) != inspect.GEN_CREATED:
                    runs[k].throw(KeyboardInterrupt)
                else:
                    next(runs[k])
            except StopIteration as done:
                outcomes[k] = done.value
                alive.remove(k)
                interrupted = interrupted or done.value.final["stop_reason"] == "interrupted"
        advance()
    return outcomes  # type: ignore[return-value]


def loop_steps(stepper: Stepper, objective: FullBatchObjective, data: Dataset, stop: StopRules, *,
               eval_every: int = 10, log_every: int = 1, layer_mode: str = "train",
               callbacks: Sequence[Callback] = (), guard: GuardOptions | None = None,
               shard: Shard | None = None, checkpoint: CheckpointHook | None = None,
               resume: dict[str, Any] | None = None) -> Generator[None, None, LoopOutcome]:
    """Train with ``stepper`` until a stop rule fires; ``objective`` is the full-batch training
    objective of the stepper's model (measurements, callbacks and the final record), ``data``
    holds the test rows. A generator: it yields after every iteration (a step or a block, or a
    rollback) and returns the outcome (final record, history, events, diagnostics), so that
    several runs can advance in lockstep (the lanes of a stacked sweep, :func:`train_lanes`);
    :func:`train_loop` runs it to its end.

    Each iteration: the stop rules; at evaluation steps (every ``eval_every``) the test metrics
    and, outside regime full, the training objective; ``stepper.run`` for one step or a block;
    the guard and the tolerance rules on each step's loss and gradient norm; the
    ``on_gradient`` callbacks; ``stepper.accept`` of the steps before the first one that must
    change the run's course; then each accepted step's clipping event, callbacks, history record
    and checkpoint.

    ``checkpoint.save(loop_state)`` is called every ``checkpoint.every`` updates with the loop's
    counters and records; passing such a state back as ``resume`` (with the model, optimizer,
    scheduler, sample schedule and RNG restored by the caller) continues the run exactly. With
    ``shard`` (a torch.distributed job) the objective holds this rank's rows and sums over ranks,
    and the time budget is agreed over ranks so that every rank stops at the same step.
    """
    guard = guard or GuardOptions()
    model = objective.model
    n = objective.rows
    train_mode = layer_mode == "train"
    full = stepper.full
    model_callbacks = bool(callbacks) and stepper.exposes_gradients

    resumed = resume or {}
    history: list[dict[str, Any]] = list(resumed.get("history", []))
    events: list[dict[str, Any]] = list(resumed.get("events", []))
    diagnostics: dict[str, list[dict[str, Any]]] = dict(resumed.get("diagnostics", {}))
    samples = int(resumed.get("samples", 0))
    train_time = float(resumed.get("train_time", 0.0))
    step = int(resumed.get("step", 0))
    first_loss: float | None = resumed.get("first_loss")
    rollbacks = int(resumed.get("rollbacks", 0))
    clip_factors: list[float] = list(resumed.get("clip_factors", []))
    status, reason = "completed", "max_steps"

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

    def context(s: int, loss: float, gnorm: float, lr: float) -> StepContext:
        return StepContext(s, model, list(objective.params), loss, gnorm, lr, objective, events, diagnostics,
                           train_mode)

    def steps_left() -> int:
        left = math.inf if stop.max_steps is None else stop.max_steps - step
        if stop.max_epochs is not None:
            # at least this many steps run before the epoch budget is spent (a step uses <= max_rows rows)
            left = min(left, math.ceil((stop.max_epochs * n - 1e-9 - samples) / (stepper.max_rows or n)))
        return int(min(left, 2**62))

    model.train(train_mode)
    try:
        while True:
            spent = stop.spent(step, samples, n)
            if spent is not None:
                status, reason = "completed", spent
                break
            if stop.time_budget_s is not None and (
                agree_max(train_time) if shard else train_time
            ) >= stop.time_budget_s:
                status, reason = "time_budget", "time_budget"
                break

            start, time_before = step, train_time
            evaluating = step % eval_every == 0
            tests: tuple[float | None, float | None] = (None, None)
            eval_train = None
            if evaluating:
                tests = stepper.measure("test", lambda: measured(lambda: test_metrics(objective, data, shard)))
                if not full:
                    eval_train = stepper.measure("train", lambda: measured(objective.loss))
                    if first_loss is None and math.isfinite(eval_train):
                        # the divergence reference is the full objective, not one (maybe lucky) batch
                        first_loss = eval_train
                    if stop.loss_tol is not None and eval_train <= stop.loss_tol:
                        log(history_record(step, samples / n, train_time, None, eval_train, None,
                                           stepper.lr(step), tests))
                        status, reason = "target_reached", "loss_tol"
                        break

            block = stepper.max_block
            count = block if block > 1 and step % block == 0 and steps_left() >= block else 1
            blk = stepper.run(step, count)

            # the first step at which the run must change course: the guard or a tolerance rule
            j, problem, stopping = count, None, None
            for i in range(0 if clean(blk, first_loss, stop, full) else count):
                loss, gnorm = blk.losses[i], blk.grad_norms[i]
                problem = guard_problem(loss, gnorm, blk.lrs[i], first_loss, stop.divergence_factor)
                if problem is not None:
                    j = i
                    break
                if first_loss is None:
                    first_loss = loss
                if full and stop.loss_tol is not None and loss <= stop.loss_tol:
                    j, stopping = i, ("target_reached", "loss_tol")
                    break
                if full and stop.grad_tol is not None and gnorm <= stop.grad_tol:
                    j, stopping = i, ("stopped", "grad_tol")
                    break

            if j == count and model_callbacks:  # count is 1: the gradient is in p.grad
                ctx = context(step, blk.losses[0], blk.grad_norms[0], blk.lrs[0])
                for cb in callbacks:
                    cb.on_gradient(ctx)
                model.train(train_mode)
            clips, accept_s = stepper.accept(j, step)
            if len(clips) != j:
                raise RuntimeError(f"{type(stepper).__name__}.accept({j}) reported {len(clips)} steps")
            share = (blk.seconds + accept_s) / count
            for i, loss, gnorm, lr, rows, clip in zip(range(j), blk.losses, blk.grad_norms, blk.lrs, blk.rows, clips):
                s = start + i
                if clip is not None and clip.clipped:
                    if not clip_factors:
                        events.append(clip_event(s, clip.before, clip.after))
                    clip_factors.append(clip.factor)
                if model_callbacks:
                    ctx = context(s, loss, gnorm, lr)
                    for cb in callbacks:
                        cb.on_update(ctx)
                    model.train(train_mode)
                if (evaluating and i == 0) or s % log_every == 0:
                    record = history_record(s, samples / n, train_time, loss, loss if full else eval_train if i == 0
                                            else None, gnorm, lr, tests if i == 0 else (None, None))
                    if clip is not None:
                        record["clip_factor"] = clip.factor
                    log(record)
                step, samples, train_time = s + 1, samples + rows, time_before + share * (i + 1)
                if callbacks:
                    info = StepInfo(step, samples / n, train_time, loss, gnorm, lr)
                    for cb in callbacks:
                        cb.on_step(info)
                if checkpoint is not None and step % checkpoint.every == 0:
                    checkpoint.save(loop_state())
            if j == count:
                yield
                continue

            # step j stops the run or is rolled back
            loss, gnorm, lr = blk.losses[j], blk.grad_norms[j], blk.lrs[j]
            if stopping is not None:
                log(history_record(step, samples / n, train_time, loss, loss, gnorm, lr,
                                   tests if j == 0 else (None, None)))
            samples += blk.rows[j]
            train_time = time_before + blk.seconds * (j + 1) / count + accept_s
            if stopping is not None:
                status, reason = stopping
                break
            kind, detail = problem
            bad_step = step
            if guard.policy == "raise":
                raise NonFiniteError(f"step {bad_step}: {detail}")
            t0 = time.perf_counter()
            target = stepper.back()
            if guard.policy == "rollback" and target is not None and rollbacks < guard.max_rollbacks:
                stepper.scale_lr(guard.lr_factor)
                rollbacks += 1
                events.append({"step": bad_step, "kind": kind, "detail": detail})
                events.append({"step": target, "kind": "rollback",
                               "detail": f"restored step {target} and cut lr to {stepper.lr(target):g} "
                                         f"(rollback {rollbacks} of at most {guard.max_rollbacks})"})
                step = target
                train_time += time.perf_counter() - t0
                yield
                continue
            train_time += time.perf_counter() - t0
            if target is not None:
                step = target
                detail += f"; restored the last good parameters (step {step})"
            events.append({"step": bad_step, "kind": kind, "detail": detail + "; run stopped as diverged"})
            status, reason = "diverged", kind
            break
    except KeyboardInterrupt:
        status, reason = "stopped", "interrupted"
        events.append({"step": step, "kind": "interrupted", "detail": "stopped by the user (Ctrl-C)"})
    stepper.sync()
    if checkpoint is not None:
        checkpoint.save(loop_state())

    final = stepper.measure("final", lambda: final_record(objective, data, train_mode=train_mode, shard=shard))
    return finish(
        objective, dict(final), train_mode=train_mode, step=step, samples=samples, train_time=train_time,
        status=status, reason=reason, rollbacks=rollbacks, final_lr=stepper.lr(step),
        loss_evaluations=stepper.loss_evaluations, clip_factors=clip_factors if stepper.clipping else None,
        history=history, events=events, diagnostics=diagnostics, callbacks=callbacks,
    )


def test_metrics(objective: FullBatchObjective, data: Dataset, shard: Shard | None = None
                 ) -> tuple[float | None, float | None]:
    """Mean test loss and accuracy (None for regression) at the model's current parameters."""
    o = objective
    return evaluate(o.model, o.loss_fn, data.X_test, data.y_test, classification=data.task_type == "classification",
                    chunk_size=o.chunk_size, total_rows=shard.n_test if shard else None, reduce=o.reduce,
                    autocast=o.autocast, accumulate=o.accumulate)


def finish(objective: FullBatchObjective, final: dict[str, Any], *, train_mode: bool, step: int, samples: int,
           train_time: float, status: str, reason: str, rollbacks: int, final_lr: float,
           loss_evaluations: int | None, clip_factors: list[float] | None, history: list[dict[str, Any]],
           events: list[dict[str, Any]], diagnostics: dict[str, list[dict[str, Any]]],
           callbacks: Sequence[Callback]) -> LoopOutcome:
    """The end of a run: the final record (``final``: :func:`final_record`'s measurements at the
    model's current parameters, completed here with the loop's counters and the clipping summary
    when ``clip_factors`` is not None), a last history record when the last step was not logged,
    and the ``on_end`` callbacks."""
    n = objective.rows
    final.update(step=step, epochs=samples / n, wall_time_s=train_time, status=status, stop_reason=reason,
                 gradient_evaluations=samples, loss_evaluations=loss_evaluations, rollbacks=rollbacks,
                 final_lr=final_lr)
    if clip_factors is not None:
        final["clipping"] = {
            "clipped_steps": len(clip_factors),
            "fraction": len(clip_factors) / max(1, step),
            "min_factor": min(clip_factors) if clip_factors else None,
            "median_factor": sorted(clip_factors)[len(clip_factors) // 2] if clip_factors else None,
        }
    if not history or history[-1]["step"] != step:
        history.append(history_record(step, samples / n, train_time, None, final["train_loss"], final["grad_norm"],
                                      final_lr, (final["test_loss"], final["test_accuracy"])))
    for cb in callbacks:
        cb.on_end(final, diagnostics)
    objective.model.train(train_mode)
    return LoopOutcome(final=final, history=history, events=events, diagnostics=diagnostics)


def final_record(objective: FullBatchObjective, data: Dataset, *, train_mode: bool,
                 shard: Shard | None = None) -> dict[str, Any]:
    """Train objective, full-batch gradient norm and test metrics at the current parameters
    (evaluated with ``model.eval()``; summed over ranks with ``shard``)."""
    o = objective
    o.model.train(False)
    res = o.loss_and_grad()
    params = list(o.params)
    gnorm = gradient_norm(params)
    for p in params:
        p.grad = None
    test_loss, test_acc = test_metrics(o, data, shard)
    train_acc = None
    if data.task_type == "classification":
        _, train_acc = evaluate(o.model, o.loss_fn, o.X, o.y, classification=True, chunk_size=o.chunk_size,
                                total_rows=o.total_rows, reduce=o.reduce, autocast=o.autocast,
                                accumulate=o.accumulate)
    o.model.train(train_mode)
    return {"train_loss": res.loss, "train_accuracy": train_acc, "grad_norm": gnorm, "test_loss": test_loss,
            "test_accuracy": test_acc}

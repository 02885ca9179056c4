"""The compiled fast path for full-batch training of small models.

For small models the framework's per-step overhead (autograd bookkeeping, the optimizer's Python
loop, the training loop's own accounting), not arithmetic, is the cost of a step. The fast path
removes it: the loss and gradient (``torch.func.grad_and_value`` of the functional objective) and
the update (a functional rule from :mod:`gdlab.optim.functional`) of ``block`` consecutive steps
are traced into one ``torch.compile`` graph, and the loop does its bookkeeping once per block.

It runs exactly the steps the eager loop (:func:`gdlab.engine.loop.train_loop`) runs and writes
the same record: per-step history (losses, gradient norms, learning rates, clip factors are
returned by the graph for every step of a block), the stopping rules, the non-finite guard
(policies raise, stop and rollback), clipping and schedules. When a block contains a step at
which the run must stop or roll back, the steps before it are replayed one by one with the same
functional step, uncompiled, so the run stops at exactly the step the eager loop would.
Differences from the eager loop are float rounding (fused kernels) and two accounting details:
the training time of a step inside a block is the block's time split evenly, and time budgets
are checked between blocks.

Where it applies: regime ``full``, one process, an update rule with a functional form (every
registry rule but the line search), no diagnostics callbacks (they need ``p.grad`` every step),
no BatchNorm/Dropout in training mode, no checkpoints or resume, no autocast, and with a
learning-rate schedule only under guard policies stop/raise. See :func:`blocker`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gdlab.data.dataset import Dataset
from gdlab.engine.functional import FunctionalObjective, batch_dependent_layers
from gdlab.engine.gradient import LossFn, evaluate, full_batch_loss_and_grad
from gdlab.engine.loop import (
    Callback,
    GuardOptions,
    LoopOutcome,
    NonFiniteError,
    StepInfo,
    StopRules,
    finish,
)
from gdlab.optim.functional import FUNCTIONAL_RULES, FunctionalRule, clip_functional, global_norm

MAX_BLOCK = 16
# A cold compile (empty inductor cache) took 33 s for linreg and 55 s for the digits MLP on a 2-core
# AMD EPYC; a 1.3-2x faster step repays that only over a run of several minutes.
AUTO_COMPILE_MIN_S = 300.0
AUTO_COMPILE_MIN_STEPS = 500
COMPILE_CHOICES = ("auto", "on", "off")


def block_length(eval_every: int, max_block: int = MAX_BLOCK) -> int:
    """Steps per compiled block: the largest divisor of ``eval_every`` not above ``max_block``,
    so that evaluation steps always fall on a block's first step."""
    return max(d for d in range(1, min(eval_every, max_block) + 1) if eval_every % d == 0)


def uses_gradients(callback: Callback) -> bool:
    """Whether ``callback`` looks at the model every step (``on_gradient``/``on_update``)."""
    kind = type(callback)
    return kind.on_gradient is not Callback.on_gradient or kind.on_update is not Callback.on_update


def blocker(
    *,
    regime: str,
    optimizer: str,
    model: torch.nn.Module,
    layer_mode: str,
    schedule: str | None,
    policy: str,
    callbacks: Sequence[Callback] = (),
    distributed: bool = False,
    checkpoints: bool = False,
    resume: bool = False,
    autocast: str | None = None,
) -> str | None:
    """Why the fast path cannot run this configuration (one phrase), or None when it can.
    ``autocast`` is the autocast dtype or an accumulation dtype other than the parameters'."""
    if regime != "full":
        return f"it covers the full-batch regime, not '{regime}'"
    if optimizer not in FUNCTIONAL_RULES:
        return f"optimizer '{optimizer}' has no functional form"
    if distributed:
        return "it runs in one process"
    if checkpoints or resume:
        return "checkpoints and resume need the eager loop"
    if autocast:
        return "autocast and a separate accumulation dtype need the eager loop"
    if any(uses_gradients(cb) for cb in callbacks):
        return "diagnostics (--health-every, --sharpness-every, gradient callbacks) need the eager loop"
    layers = batch_dependent_layers(model)
    if layer_mode == "train" and layers:
        return f"layer '{layers[0]}' (BatchNorm/Dropout) changes with the batch in layer mode train"
    if schedule and policy == "rollback":
        return "a learning-rate schedule with the rollback guard needs the eager loop"
    return None


class StepFunctions:
    """One full-batch step and a block of ``block`` steps as pure functions of
    (params, state, lr(s), X, y); ``compiled_block`` is the block under ``torch.compile``."""

    def __init__(self, objective: FunctionalObjective, rule: FunctionalRule, block: int,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        self.objective = objective
        self.rule = rule
        self.block = block
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self._grad = torch.func.grad_and_value(objective)
        self.compiled_block: Callable[..., Any] | None = None

    def one(self, params: list[Tensor], state: dict[str, Any], lr: Tensor, X: Tensor, y: Tensor):
        """theta_s -> theta_{s+1}: returns (params, state, loss, grad_norm, clip_factor)."""
        grads, loss = self._grad(params, X, y)
        gnorm = global_norm(grads)
        factor = torch.ones_like(gnorm)
        if self.clip_norm is not None or self.clip_value is not None:
            grads, factor = clip_functional(grads, self.clip_norm, self.clip_value)
        params, state = self.rule.update(params, grads, state, lr)
        return params, state, loss, gnorm, factor

    def steps(self, params: list[Tensor], state: dict[str, Any], lrs: Tensor, X: Tensor, y: Tensor):
        """``block`` steps with learning rates ``lrs`` (block,): returns (params, state, losses,
        grad_norms, clip_factors, params and state before the last step)."""
        losses, gnorms, factors = [], [], []
        before = (params, state)
        for i in range(self.block):
            before = (params, state)
            params, state, loss, gnorm, factor = self.one(params, state, lrs[i], X, y)
            losses.append(loss)
            gnorms.append(gnorm)
            factors.append(factor)
        return (params, state, torch.stack(losses).double(), torch.stack(gnorms), torch.stack(factors),
                before[0], before[1])

    def compile(self) -> None:
        self.compiled_block = torch.compile(self.steps, dynamic=False)


@dataclass
class FastPathChoice:
    """What the run's engine is and why (recorded as ``final.engine``)."""

    path: str
    reason: str
    block: int | None = None
    compile_s: float | None = None
    step_s: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "block": self.block,
                "compile_s": self.compile_s, "step_s": dict(self.step_s)}


def _tensor_lr(lr: float, like: Tensor) -> Tensor:
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.tensor(lr, dtype=dtype, device=like.device)


def try_compile(
    fns: StepFunctions, params: list[Tensor], state: dict[str, Any], lr: float, X: Tensor, y: Tensor,
    *, eager_step_s: float | None,
) -> FastPathChoice:
    """Compile the block and time it on copies (the run's state is untouched). The choice is
    ``compiled`` when it compiled and (with ``eager_step_s`` given) a compiled step is faster
    than an eager one, else ``eager`` with the reason."""
    lrs = _tensor_lr(lr, params[0]).expand(fns.block).clone()
    copies = [p.clone() for p in params]
    t0 = time.perf_counter()
    try:
        fns.compile()
        fns.compiled_block(copies, state, lrs, X, y)
    except Exception as exc:  # inductor/dynamo failures come in many types
        fns.compiled_block = None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return FastPathChoice("eager", f"torch.compile failed ({type(exc).__name__}: {first}); "
                                       "ran the eager loop")
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    fns.compiled_block(copies, state, lrs, X, y)
    compiled_step = (time.perf_counter() - t1) / fns.block
    timing = {"compiled": compiled_step}
    if eager_step_s is not None:
        timing["eager"] = eager_step_s
        if compiled_step >= eager_step_s:
            fns.compiled_block = None
            return FastPathChoice("eager", f"a compiled step ({compiled_step:.3g} s) is not faster "
                                           f"than an eager one ({eager_step_s:.3g} s)",
                                  compile_s=compile_s, step_s=timing)
    return FastPathChoice("compiled", "compiled fast path", block=fns.block, compile_s=compile_s,
                          step_s=timing)


def eager_step_time(model: torch.nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor,
                    chunk_size: int | None, repeats: int = 1) -> float:
    """Median seconds of one eager full-batch gradient over ``repeats`` (a lower bound of an
    eager step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        full_batch_loss_and_grad(model, loss_fn, X, y, chunk_size=chunk_size, params=params)
        times.append(time.perf_counter() - t0)
    for p in params:
        p.grad = None
    return sorted(times)[len(times) // 2]


def fast_train_loop(
    model: torch.nn.Module,
    data: Dataset,
    loss_fn: LossFn,
    fns: StepFunctions,
    stop: StopRules,
    *,
    lr: float,
    lr_schedule: Sequence[float] | None = None,
    chunk_size: int | None = None,
    eval_every: int = 10,
    log_every: int = 1,
    layer_mode: str = "train",
    callbacks: Sequence[Callback] = (),
    guard: GuardOptions | None = None,
    regularizer: Callable[[], Tensor] | None = None,
) -> LoopOutcome:
    """Train like :func:`gdlab.engine.loop.train_loop` in regime full with the functional steps
    ``fns`` (compiled blocks when ``fns.compiled_block`` is set, else single eager steps).

    ``lr`` is the constant learning rate; ``lr_schedule`` (one value per step, from the run's
    scheduler) replaces it when given. ``regularizer`` is the module form of the objective's
    R(theta), used by the final record."""
    guard = guard or GuardOptions()
    objective = fns.objective
    X, y = data.X_train, data.y_train
    n = data.n_train
    train_mode = layer_mode == "train"
    clipping = guard.clip_norm is not None or guard.clip_value is not None
    params = objective.initial()
    state = fns.rule.init(params)
    block = fns.block if fns.compiled_block is not None else 1
    scale = 1.0

    history: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    step, samples, train_time = 0, 0, 0.0
    first_loss: float | None = None
    rollbacks = 0
    clip_factors: list[float] = []
    previous: tuple[list[Tensor], dict[str, Any]] | None = None
    status, reason = "completed", "max_steps"

    def lr_at(s: int) -> float:
        base = lr if lr_schedule is None else lr_schedule[min(s, len(lr_schedule) - 1)]
        return base * scale

    def lrs_from(s: int, count: int) -> Tensor:
        return torch.tensor([lr_at(s + i) for i in range(count)], dtype=params[0].dtype, device=X.device)

    def advance(p: list[Tensor], st: dict[str, Any], s: int, count: int) -> tuple[list[Tensor], dict[str, Any]]:
        for i in range(count):
            p, st, *_ = fns.one(p, st, _tensor_lr(lr_at(s + i), p[0]), X, y)
        return p, st

    def test_metrics() -> tuple[float | None, float | None]:
        objective.load_into_model(params)
        model.train(False)
        try:
            return evaluate(model, loss_fn, data.X_test, data.y_test,
                            classification=data.task_type == "classification", chunk_size=chunk_size)
        finally:
            model.train(train_mode)

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        for cb in callbacks:
            cb.on_log(record)

    def steps_left() -> int:
        left = math.inf if stop.max_steps is None else stop.max_steps - step
        if stop.max_epochs is not None:
            left = min(left, math.ceil((stop.max_epochs * n - 1e-9 - samples) / n))
        return int(min(left, 2**62))

    model.train(train_mode)
    try:
        while True:
            left = steps_left()
            if left <= 0:
                status, reason = "completed", "max_steps" if (
                    stop.max_steps is not None and step >= stop.max_steps) else "max_epochs"
                break
            if stop.time_budget_s is not None and train_time >= stop.time_budget_s:
                status, reason = "time_budget", "time_budget"
                break
            evaluating = step % eval_every == 0
            tests = test_metrics() if evaluating else (None, None)
            count = block if (block > 1 and step % block == 0 and left >= block) else 1
            t0 = time.perf_counter()
            if count > 1:
                new_params, new_state, losses_t, gnorms_t, factors_t, last_p, last_s = fns.compiled_block(
                    params, state, lrs_from(step, count), X, y)
            else:
                last_p, last_s = params, state
                new_params, new_state, loss_t, gnorm_t, factor_t = fns.one(
                    params, state, _tensor_lr(lr_at(step), params[0]), X, y)
                losses_t, gnorms_t, factors_t = loss_t.reshape(1), gnorm_t.reshape(1), factor_t.reshape(1)
            losses, gnorms, factors = losses_t.tolist(), gnorms_t.tolist(), factors_t.tolist()
            elapsed = time.perf_counter() - t0

            outcome = None  # (kind, index) of the step at which the block's run must change course
            for i in range(count):
                s, loss, gnorm, step_lr = step + i, losses[i], gnorms[i], lr_at(step + i)
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    outcome = ("nonfinite", i, f"loss={loss:.4g}, gradient norm={gnorm:.4g} at lr={step_lr:g}")
                    break
                if first_loss is not None and loss > stop.divergence_factor * max(abs(first_loss), 1e-12):
                    outcome = ("loss_exploding", i, f"loss {loss:.4g} exceeds {stop.divergence_factor:g} x "
                                                    f"the initial loss {first_loss:.4g} at lr={step_lr:g}")
                    break
                if first_loss is None:
                    first_loss = loss
                record: dict[str, Any] = {
                    "step": s, "epochs": (samples + i * n) / n, "wall_time_s": train_time + elapsed * i / count,
                    "batch_loss": loss, "train_loss": loss, "grad_norm": gnorm, "lr": step_lr,
                    "test_loss": tests[0] if i == 0 else None, "test_accuracy": tests[1] if i == 0 else None,
                }
                if stop.loss_tol is not None and loss <= stop.loss_tol:
                    outcome = ("loss_tol", i, "")
                    log(record)
                    break
                if stop.grad_tol is not None and gnorm <= stop.grad_tol:
                    outcome = ("grad_tol", i, "")
                    log(record)
                    break
                if clipping:
                    if factors[i] != 1.0:
                        if not clip_factors:
                            events.append({"step": s, "kind": "clip",
                                           "detail": f"first clipped step: gradient norm {gnorm:.4g} -> "
                                                     f"{gnorm * factors[i]:.4g}"})
                        clip_factors.append(factors[i])
                    record["clip_factor"] = factors[i]
                if (evaluating and i == 0) or s % log_every == 0:
                    log(record)
                info = StepInfo(s + 1, (samples + (i + 1) * n) / n, train_time + elapsed * (i + 1) / count,
                                loss, gnorm, step_lr)
                for cb in callbacks:
                    cb.on_step(info)

            if outcome is None:
                params, state, previous = new_params, new_state, (last_p, last_s)
                step, samples, train_time = step + count, samples + count * n, train_time + elapsed
                continue

            kind, i, detail = outcome
            samples += (i + 1) * n
            train_time += elapsed * (i + 1) / count
            if kind in ("loss_tol", "grad_tol"):
                params, state = advance(params, state, step, i)
                step += i
                status, reason = ("target_reached", "loss_tol") if kind == "loss_tol" else ("stopped", "grad_tol")
                break
            bad_step = step + i
            if guard.policy == "raise":
                raise NonFiniteError(f"step {bad_step}: {detail}")
            good = previous if i == 0 else advance(params, state, step, i - 1)
            can_roll_back = guard.policy in ("rollback", "stop") and good is not None
            if guard.policy == "rollback" and can_roll_back and rollbacks < guard.max_rollbacks:
                params, state = good
                step = bad_step - 1
                scale *= guard.lr_factor
                rollbacks += 1
                previous = None
                events.append({"step": bad_step, "kind": kind, "detail": detail})
                events.append({"step": step, "kind": "rollback",
                               "detail": f"restored step {step} and cut lr to {lr_at(step):g} "
                                         f"(rollback {rollbacks} of at most {guard.max_rollbacks})"})
                continue
            if can_roll_back:
                params, state = good
                step = bad_step - 1
                detail += f"; restored the last good parameters (step {step})"
            else:
                step = bad_step
            events.append({"step": bad_step, "kind": kind, "detail": detail + "; run stopped as diverged"})
            status, reason = "diverged", kind
            break
    except KeyboardInterrupt:
        status, reason = "stopped", "interrupted"
        events.append({"step": step, "kind": "interrupted", "detail": "stopped by the user (Ctrl-C)"})

    objective.load_into_model(params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return finish(
        model, data, loss_fn, trainable, regularizer=regularizer, chunk_size=chunk_size,
        train_mode=train_mode, shard=None, step=step, samples=samples, train_time=train_time,
        status=status, reason=reason, rollbacks=rollbacks, final_lr=lr_at(step), loss_evaluations=None,
        clip_factors=clip_factors if clipping else None, history=history, events=events, diagnostics={},
        callbacks=callbacks,
    )


def warn_fallback(choice: FastPathChoice) -> None:
    """Tell the user why a requested compiled run runs eagerly."""
    warnings.warn(f"gdlab: compiled fast path not used: {choice.reason}", RuntimeWarning, stacklevel=2)

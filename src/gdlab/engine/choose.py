"""Which stepper a run gets, and why: the one place that decides (recorded as ``final.engine``).

The eager stepper runs everything. K runs that differ only in learning rate and seed may train
as one stacked model when :func:`stacked_blocker` lets them (:mod:`gdlab.sweep` measures whether
it pays). The compiled stepper runs what :func:`compiled_blocker` lets through; under
``--compile auto`` it is chosen only when compiling can pay for itself (a long enough run, a
measured compiled step faster than an eager gradient), under ``--compile on`` whenever it may
run (a configuration it cannot run is refused, a failed compile falls back to eager with a
warning).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gdlab.engine.loop import Callback, uses_gradients
from gdlab.engine.objective import LossFn, batch_dependent_layers, full_batch_loss_and_grad
from gdlab.engine.steppers.compiled import StepFunctions, tensor_lr
from gdlab.engine.steppers.stacked import STACKED_LOSSES, stackable
from gdlab.errors import GdlabError
from gdlab.optim.functional import FUNCTIONAL_RULES

# A cold compile (empty inductor cache) took 33 s for linreg and 55 s for the digits MLP on a 2-core
# AMD EPYC; a 1.3-2x faster step repays that only over a run of several minutes.
AUTO_COMPILE_MIN_S = 300.0
AUTO_COMPILE_MIN_STEPS = 500


@dataclass
class StepperChoice:
    """The stepper a run got and why (``final.engine``)."""

    path: str
    reason: str
    block: int | None = None
    compile_s: float | None = None
    step_s: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "block": self.block,
                "compile_s": self.compile_s, "step_s": dict(self.step_s)}


def compiled_blocker(*, regime: str, optimizer: str, model: torch.nn.Module, layer_mode: str,
                     schedule: str | None, step_budget: bool = True, callbacks: Sequence[Callback] = (),
                     distributed: bool = False, checkpoints: bool = False, resume: bool = False,
                     autocast: str | None = None, streamed: bool = False) -> str | None:
    """Why the compiled stepper cannot run this configuration (one phrase), or None when it can.
    ``schedule`` is a non-constant schedule's name, ``step_budget`` whether the run's number of
    steps is known, ``autocast`` the autocast dtype or an accumulation dtype other than the
    parameters', ``streamed`` whether the rows come from a DataLoader."""
    if streamed:
        return "rows streamed from a DataLoader need the eager loop"
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
    if schedule and not step_budget:
        return "a learning-rate schedule without a step budget needs the eager loop"
    return None


def stacked_blocker(*, optimizer: str, policy: str, model: torch.nn.Module, loss: str,
                    per_step_work: bool = False, autocast: bool = False,
                    distributed: bool = False) -> str | None:
    """Why K runs of one configuration (differing only in lr and seed) cannot train as one
    stacked model (one phrase), or None when they can. ``per_step_work``: diagnostics or
    checkpoints; ``autocast``: an autocast or accumulation option."""
    if optimizer not in FUNCTIONAL_RULES:
        return f"optimizer '{optimizer}' has no functional form"
    if policy != "stop":
        return f"the stacked guard implements policy stop, not '{policy}'"
    if per_step_work:
        return "diagnostics and checkpoints need separate runs"
    if autocast:
        return "autocast and accumulation options need separate runs"
    if distributed:
        return "a multi-process run"
    if loss not in STACKED_LOSSES:
        return f"loss '{loss}' does not stack"
    return stackable(model)


def choose_stepper(mode: str, blocked: str | None, make_functions: Callable[[], StepFunctions], *, lr: float,
                   model: torch.nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, chunk_size: int | None,
                   deterministic: bool = False, expected_steps: int | None = None,
                   time_budget_s: float | None = None) -> tuple[StepFunctions | None, StepperChoice]:
    """The compiled step functions and the choice, or (None, choice) for the eager stepper.

    ``mode`` is ``--compile``: ``off`` eager; ``on`` compiled, a GdlabError when ``blocked``
    (the :func:`compiled_blocker` reason) is set, the eager stepper with a warning when compiling
    fails; ``auto`` compiled only when not blocked, not ``deterministic``, long enough that
    compiling can pay back (estimated eager time >= AUTO_COMPILE_MIN_S seconds, from a measured
    gradient) and a measured compiled step is faster than an eager gradient."""
    if mode == "off":
        return None, StepperChoice("eager", "--compile off")
    if blocked is not None:
        if mode == "on":
            raise GdlabError(f"--compile on: the compiled fast path cannot run this configuration: "
                             f"{blocked}; use --compile auto or off")
        return None, StepperChoice("eager", blocked)
    eager_s = None
    if mode == "auto":
        if deterministic:
            return None, StepperChoice("eager", "deterministic runs use the eager loop")
        if (expected_steps or 0) < AUTO_COMPILE_MIN_STEPS and time_budget_s is None:
            return None, StepperChoice("eager", f"the run is too short to repay compiling "
                                                f"(fewer than {AUTO_COMPILE_MIN_STEPS} steps)")
        eager_s = eager_step_time(model, loss_fn, X, y, chunk_size)
        budget = [t for t in ((expected_steps or 0) * eager_s, time_budget_s) if t]
        estimate = min(budget) if budget else 0.0
        if estimate < AUTO_COMPILE_MIN_S:
            return None, StepperChoice(
                "eager", f"the run is too short to repay compiling (about {estimate:.2g} s eager, "
                         f"compiling pays from about {AUTO_COMPILE_MIN_S:g} s)", step_s={"eager": eager_s})
    fns = make_functions()
    params = fns.objective.initial()
    choice = try_compile(fns, params, fns.rule.init(params), lr, X, y, eager_step_s=eager_s)
    if choice.path != "compiled":
        if mode == "on":
            warnings.warn(f"gdlab: compiled fast path not used: {choice.reason}", RuntimeWarning, stacklevel=2)
        return None, choice
    return fns, choice


def try_compile(fns: StepFunctions, params: list[Tensor], state: dict[str, Any], lr: float, X: Tensor,
                y: Tensor, *, eager_step_s: float | None) -> StepperChoice:
    """Compile the block and time it on copies (the run's state is untouched). The choice is
    ``compiled`` when it compiled and (with ``eager_step_s`` given) a compiled step is faster
    than an eager one, else ``eager`` with the reason."""
    lrs = tensor_lr(lr, params[0]).expand(fns.block).clone()
    copies = [p.clone() for p in params]
    t0 = time.perf_counter()
    try:
        fns.compile()
        fns.compiled_block(copies, state, lrs, X, y)
    except Exception as exc:  # inductor/dynamo failures come in many types
        fns.compiled_block = None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return StepperChoice("eager", f"torch.compile failed ({type(exc).__name__}: {first}); "
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
            return StepperChoice("eager", f"a compiled step ({compiled_step:.3g} s) is not faster "
                                          f"than an eager one ({eager_step_s:.3g} s)",
                                 compile_s=compile_s, step_s=timing)
    return StepperChoice("compiled", "compiled fast path", block=fns.block, compile_s=compile_s,
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

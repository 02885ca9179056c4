"""The compiled stepper: full-batch steps of a small model traced into one ``torch.compile`` graph.

For small models the framework's per-step overhead (autograd bookkeeping, the optimizer's Python
loop, the loop's own accounting), not arithmetic, is the cost of a step. Here the loss and
gradient (``torch.func.grad_and_value`` of the functional objective), clipping and the update (a
functional rule from :mod:`gdlab.optim.functional`) of ``block`` consecutive steps are one
compiled graph, and the loop does its bookkeeping once per block.

The graph returns every step's loss, gradient norm and clip factor, so the loop records each step
as the eager stepper would. When a block holds a step at which the run must stop or roll back,
:meth:`CompiledStepper.accept` replays the steps before it one by one with the same functional
step, uncompiled, so the run stops at exactly the step an eager run would. Differences from the
eager stepper are float rounding (fused kernels) and accounting inside a block: a step's training
time is the block's time split evenly, and time budgets are checked between blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gdlab.engine.objective import FunctionalObjective
from gdlab.engine.steppers import Block, Clip, Stepper
from gdlab.optim.functional import FunctionalRule, clip_functional, global_norm

MAX_BLOCK = 16


def block_length(eval_every: int, max_block: int = MAX_BLOCK) -> int:
    """Steps per compiled block: the largest divisor of ``eval_every`` not above ``max_block``,
    so that evaluation steps always fall on a block's first step."""
    return max(d for d in range(1, min(eval_every, max_block) + 1) if eval_every % d == 0)


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


def tensor_lr(lr: float, like: Tensor) -> Tensor:
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.tensor(lr, dtype=dtype, device=like.device)


class CompiledStepper(Stepper):
    """Full-batch steps by ``fns`` (compiled blocks when ``fns.compiled_block`` is set, else single
    uncompiled functional steps) on the rows ``X``, ``y``. ``lr`` is the constant learning rate;
    ``lr_schedule`` (one value per step, the run's scheduler's) replaces it when given."""

    name = "compiled"

    def __init__(self, fns: StepFunctions, X: Tensor, y: Tensor, *, lr: float,
                 lr_schedule: Sequence[float] | None = None) -> None:
        self.fns, self.X, self.y = fns, X, y
        self.base_lr, self.lr_schedule, self.scale = lr, lr_schedule, 1.0
        self.clipping = fns.clip_norm is not None or fns.clip_value is not None
        self.params = fns.objective.initial()
        self.state = fns.rule.init(self.params)
        self.max_block = fns.block if fns.compiled_block is not None else 1
        self.previous: tuple[int, list[Tensor], dict[str, Any]] | None = None
        self._pending: tuple[Any, ...] | None = None  # the last run: start, count, results

    def lr(self, step: int) -> float:
        sched = self.lr_schedule
        base = self.base_lr if sched is None else sched[min(step, len(sched) - 1)]
        return base * self.scale

    def _advance(self, params: list[Tensor], state: dict[str, Any], step: int, count: int):
        for i in range(count):
            params, state, *_ = self.fns.one(params, state, tensor_lr(self.lr(step + i), params[0]), self.X, self.y)
        return params, state

    def run(self, step: int, count: int) -> Block:
        t0 = time.perf_counter()
        if count > 1:
            lrs = torch.tensor([self.lr(step + i) for i in range(count)], dtype=self.params[0].dtype,
                               device=self.X.device)
            new, state, losses, gnorms, factors, *last = self.fns.compiled_block(
                self.params, self.state, lrs, self.X, self.y)
        else:
            last = [self.params, self.state]
            new, state, loss, gnorm, factor = self.fns.one(self.params, self.state,
                                                           tensor_lr(self.lr(step), self.params[0]), self.X, self.y)
            losses, gnorms, factors = loss.reshape(1), gnorm.reshape(1), factor.reshape(1)
        losses, gnorms, factors = losses.tolist(), gnorms.tolist(), factors.tolist()
        self._pending = (step, count, new, state, gnorms, factors, last)
        n = int(self.X.shape[0])
        return Block(losses, gnorms, [self.lr(step + i) for i in range(count)], [n] * count,
                     time.perf_counter() - t0)

    def accept(self, k: int, step: int) -> tuple[list[Clip | None], float]:
        start, count, new, state, gnorms, factors, last = self._pending
        if k == count:
            self.previous = (start + k - 1, *last)
            self.params, self.state = new, state
        elif k > 0:
            p, s = self._advance(self.params, self.state, start, k - 1)
            self.previous = (start + k - 1, p, s)
            self.params, self.state = self._advance(p, s, start + k - 1, 1)
        clips = [Clip.scaled(f, g) if self.clipping else None for f, g in zip(factors[:k], gnorms[:k])]
        return clips, 0.0

    def back(self) -> int | None:
        if self.previous is None:
            return None
        # previous stays: a second failure from the same step returns there again, as eager does
        step, self.params, self.state = self.previous
        return step

    def scale_lr(self, factor: float) -> None:
        self.scale *= factor

    def sync(self) -> None:
        self.fns.objective.load_into_model(self.params)

"""Gradient descent with an Armijo backtracking line search on the full-batch loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class ArmijoLineSearch(torch.optim.Optimizer):
    """Gradient descent with Armijo backtracking on the loss given by `closure`.

    The direction is ``d = -g`` with ``g`` the gradient already in ``p.grad`` (all parameters
    jointly). Each step tries ``t = t_start * shrink**k`` for k = 0, 1, ..., max_backtracks with
    ``t_start = min(max_lr, grow * t_prev)`` (``t_prev``: the last accepted step, initially `lr`)
    and accepts the first t with the Armijo condition

        f(x - t g) <= f(x) - c * t * ||g||^2.

    If none satisfies it, the parameters are restored and no step is taken; ``t_prev`` becomes
    the smallest step tried, so the next call searches below it. No step is taken either when
    ``||g|| == 0`` or f(x) or g is not finite.

    After each step ``param_groups[0]['lr']`` is the accepted step (0.0 when no step was taken)
    and :attr:`state_info` holds ``last_step_size``, ``last_evaluations`` (closure calls in the
    last step), ``total_evaluations`` and ``last_status`` (``accepted``, ``zero_gradient``,
    ``not_finite`` or ``no_decrease``) and ``failures`` (steps that found no decrease).
    All parameters share one step size, so parameter groups are not supported.
    """

    def __init__(
        self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1.0, c: float = 1e-4,
        shrink: float = 0.5, grow: float = 2.0, max_backtracks: int = 50, max_lr: float | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 < c < 1:
            raise ValueError(f"c must be in (0, 1), got {c}")
        if not 0 < shrink < 1:
            raise ValueError(f"shrink must be in (0, 1), got {shrink}")
        if not grow >= 1:
            raise ValueError(f"grow must be >= 1, got {grow}")
        if max_backtracks < 0:
            raise ValueError(f"max_backtracks must be >= 0, got {max_backtracks}")
        if max_lr is not None and not max_lr > 0:
            raise ValueError(f"max_lr must be > 0 or None, got {max_lr}")
        defaults = dict(lr=lr, c=c, shrink=shrink, grow=grow, max_backtracks=max_backtracks, max_lr=max_lr,
                        t_prev=lr)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("ArmijoLineSearch uses one step size for all parameters; "
                             "pass one parameter group")
        self.state_info: dict[str, Any] = {"last_step_size": 0.0, "last_evaluations": 0,
                                           "total_evaluations": 0, "last_status": None, "failures": 0}

    def _finish(self, step_size: float, evaluations: int, status: str) -> None:
        self.param_groups[0]["lr"] = step_size
        info = self.state_info
        info.update(last_step_size=step_size, last_evaluations=evaluations, last_status=status)
        info["total_evaluations"] += evaluations
        if status == "no_decrease":
            info["failures"] += 1

    @torch.no_grad()
    def step(self, closure: Callable[[], float],  # type: ignore[override]
             loss: float | None = None) -> float:
        """Take one line-search step along -p.grad; return the loss at the new point.

        `closure()` returns the loss (a float) at the current parameters; `loss` is the loss at
        the current point if already known (else one closure call computes it).
        """
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        evaluations = 0
        if loss is None:
            loss = float(closure())
            evaluations += 1
        f0 = float(loss)
        grads = [p.grad for p in params]
        # float64 and math.fsum so the Armijo threshold is not the limiting error in float32
        g_sq = math.fsum(float(g.to(torch.float64).square().sum()) for g in grads)
        if g_sq == 0.0:
            self._finish(0.0, evaluations, "zero_gradient")
            return f0
        if not (math.isfinite(g_sq) and math.isfinite(f0)):
            self._finish(0.0, evaluations, "not_finite")
            return f0

        max_lr = math.inf if group["max_lr"] is None else group["max_lr"]
        t = min(max_lr, group["t_prev"] * group["grow"])
        origin = [p.detach().clone() for p in params]
        for k in range(group["max_backtracks"] + 1):
            if k:
                t *= group["shrink"]
            for p, x0, g in zip(params, origin, grads):
                p.copy_(x0).add_(g, alpha=-t)
            f_t = float(closure())
            evaluations += 1
            if f_t <= f0 - group["c"] * t * g_sq:
                group["t_prev"] = t
                self._finish(t, evaluations, "accepted")
                return f_t

        for p, x0 in zip(params, origin):
            p.copy_(x0)
        group["t_prev"] = t
        self._finish(0.0, evaluations, "no_decrease")
        return f0

    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state (t_prev is in the parameter group) plus :attr:`state_info`."""
        state = super().state_dict()
        state["state_info"] = dict(self.state_info)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, including t_prev and the evaluation counters."""
        state_dict = dict(state_dict)
        info = state_dict.pop("state_info", None)
        super().load_state_dict(state_dict)
        if info is not None:
            self.state_info = dict(info)

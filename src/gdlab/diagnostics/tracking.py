"""Diagnostics recorded during training, as loop callbacks: gradient health and sharpness.

Series written into the run record's ``diagnostics`` (each a list of ``{step, value}``):

* ``grad_norm/<param>``, ``param_norm/<param>``, ``update_ratio/<param>`` (every ``every`` steps);
* ``sharpness`` (top Hessian eigenvalue of the full-batch training objective) and ``two_over_lr``.

Events: ``vanishing`` / ``exploding`` (first time per parameter tensor), ``sharpness_above_2_over_lr``
and ``sharpness_below_2_over_lr`` (each crossing of the stability threshold).
"""

from __future__ import annotations

from typing import Any

from gdlab.diagnostics.health import (
    GradientHealthMonitor, HealthThresholds, gradient_norms, parameter_norms, snapshot, update_ratios,
)
from gdlab.diagnostics.hessian import sharpness
from gdlab.engine.loop import Callback, StepContext


class HealthCallback(Callback):
    """Per-parameter gradient norms, parameter norms and update-to-parameter ratios every
    ``every`` steps, with vanishing/exploding detection; the summary lands in ``final['health']``."""

    def __init__(self, every: int = 1, thresholds: HealthThresholds | None = None) -> None:
        self.every = every
        self.thresholds = thresholds or HealthThresholds()
        self.monitor: GradientHealthMonitor | None = None
        self._before: dict[str, Any] | None = None

    def on_gradient(self, ctx: StepContext) -> None:
        if ctx.step % self.every:
            self._before = None
            return
        if self.monitor is None:
            weights = [name for name, p in ctx.model.named_parameters() if p.requires_grad and p.dim() >= 2]
            self.monitor = GradientHealthMonitor(self.thresholds, weight_names=weights)
        norms = gradient_norms(ctx.model)
        for name, value in norms.items():
            ctx.record(f"grad_norm/{name}", value)
        ctx.events.extend(self.monitor.check(ctx.step, norms))
        self._before = snapshot(ctx.model)

    def on_update(self, ctx: StepContext) -> None:
        if self._before is None:
            return
        for name, value in update_ratios(self._before, ctx.model).items():
            ctx.record(f"update_ratio/{name}", value)
        for name, value in parameter_norms(ctx.model).items():
            ctx.record(f"param_norm/{name}", value)
        self._before = None

    def on_end(self, final: dict[str, Any], diagnostics: dict[str, list[dict[str, Any]]]) -> None:
        if self.monitor is not None:
            final["health"] = self.monitor.summary()


class SharpnessCallback(Callback):
    """The top Hessian eigenvalue of the full-batch training objective every ``every`` steps
    (Lanczos, ``iters`` Hessian-vector products), recorded beside ``2/lr``."""

    def __init__(self, every: int = 10, iters: int = 20, seed: int = 0) -> None:
        self.every, self.iters, self.seed = every, iters, seed
        self._above: bool | None = None

    def on_gradient(self, ctx: StepContext) -> None:
        if ctx.step % self.every:
            return
        obj = ctx.objective
        ctx.model.train(False)
        result = sharpness(obj.model, obj.loss_fn, obj.X, obj.y, method="lanczos", iters=self.iters,
                           chunk_size=obj.chunk_size, regularizer=obj.regularizer, seed=self.seed)
        ctx.model.train(ctx.train_mode)
        value = result.values[0]
        threshold = 2.0 / ctx.lr if ctx.lr > 0 else float("inf")
        ctx.record("sharpness", value)
        ctx.record("two_over_lr", threshold)
        above = value > threshold
        if above != self._above and (self._above is not None or above):
            side = "above" if above else "below"
            ctx.event(f"sharpness_{side}_2_over_lr",
                      f"sharpness {value:.4g} is {side} 2/lr = {threshold:.4g} (lr {ctx.lr:g})")
        self._above = above

"""Gradient health: per-layer gradient, parameter and update norms, and detection of vanishing
and exploding gradients.

All norms are 2-norms over a whole tensor, computed in float64 and returned as Python floats;
layers are named as in ``model.named_parameters()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from gdlab.errors import GdlabError, unknown_name

REFERENCES: dict[str, str] = {
    "output": "the last weight tensor (closest to the loss) at the same step",
    "max": "the largest weight-gradient norm at the same step",
    "initial": "the tensor's own first (finite, nonzero) gradient norm",
}


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64))


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """``||p.grad||_2`` (float64) for each named parameter of ``model`` that has a gradient."""
    return {name: _norm(p.grad) for name, p in model.named_parameters() if p.grad is not None}


def parameter_norms(model: nn.Module) -> dict[str, float]:
    """``||p||_2`` (float64) for each named parameter of ``model``."""
    return {name: _norm(p) for name, p in model.named_parameters()}


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weight tensors of ``model``: parameters with ndim >= 2 (biases and norm
    scales are 1-D), in ``named_parameters()`` order."""
    return [name for name, p in model.named_parameters() if p.ndim >= 2]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Detached clones of ``model``'s parameters by name, to measure an update with
    :func:`update_ratios`."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def update_ratios(before: Mapping[str, Tensor], model: nn.Module) -> dict[str, float]:
    """Relative update ``||theta_new - theta_old||_2 / ||theta_old||_2`` (float64) per parameter
    of ``model`` present in ``before`` (a :func:`snapshot`).

    A tensor whose old norm is 0 (e.g. a zero-initialised bias) gets ``||delta|| / ||theta_new||``
    instead, which is 1.0 if it moved (all of it is new) and 0.0 if it stayed at zero, so the
    ratio is never infinite for a finite update.
    """
    ratios = {}
    for name, p in model.named_parameters():
        if name not in before:
            continue
        old = before[name].detach().to(device=p.device, dtype=torch.float64)
        new = p.detach().to(torch.float64)
        delta = _norm(new - old)
        old_norm = _norm(old)
        ratios[name] = delta / old_norm if old_norm > 0 else (1.0 if delta > 0 else 0.0)
    return ratios


def _check_number(value: Any, name: str, ok: Callable[[Any], bool], rule: str) -> None:
    if not (isinstance(value, Real) and not isinstance(value, bool) and ok(value)):
        raise GdlabError(f"health threshold {name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class HealthThresholds:
    """When a gradient counts as vanishing or exploding (validated on creation, GdlabError).

    - ``vanishing_ratio``: a weight tensor's gradient norm below this fraction of the reference
      is vanishing; in (0, 1).
    - ``reference``: ``"output"`` (the last weight tensor in ``named_parameters()`` order, the
      one closest to the loss in a sequential model, at the same step), ``"max"`` (the largest
      weight-gradient norm at the same step) or ``"initial"`` (the tensor's own first finite,
      nonzero gradient norm).
    - ``exploding_factor``: a gradient norm above this many times the tensor's own first finite,
      nonzero norm is exploding; > 1.
    - ``exploding_absolute``: optional ceiling; a gradient norm above it is exploding; > 0.
    """

    vanishing_ratio: float = 1e-3
    reference: str = "output"
    exploding_factor: float = 1e3
    exploding_absolute: float | None = None

    def __post_init__(self) -> None:
        _check_number(self.vanishing_ratio, "vanishing_ratio", lambda v: 0 < v < 1, "in (0, 1)")
        if self.reference not in REFERENCES:
            raise unknown_name("health reference", str(self.reference), REFERENCES)
        _check_number(self.exploding_factor, "exploding_factor", lambda v: 1 < v < math.inf, "finite and > 1")
        if self.exploding_absolute is not None:
            _check_number(self.exploding_absolute, "exploding_absolute", lambda v: 0 < v < math.inf,
                          "finite and > 0 (or None)")


@dataclass
class _LayerStats:
    first: float
    last: float
    low: float | None = None
    high: float | None = None
    baseline: float | None = None  # first finite, nonzero norm: the tensor's own scale
    vanishing_steps: int = 0
    exploding_steps: int = 0

    def observe(self, value: float) -> None:
        self.last = value
        if math.isfinite(value):
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class GradientHealthMonitor:
    """Watches per-layer gradient norms over steps and reports vanishing and exploding layers.

    Feed it :func:`gradient_norms` at each step you check. Only weight tensors are judged for
    vanishing: those in ``weight_names``, or every name when ``weight_names`` is None (use
    :meth:`for_model` to take the ndim >= 2 parameters of a model). Every tensor is judged for
    exploding; a non-finite norm is always exploding. Each (layer, kind) is reported once, the
    first time it is seen; the number of checks in which it held is kept for :meth:`summary`.
    Vanishing is not judged at a step whose reference norm is zero or not finite (no scale).
    """

    def __init__(self, thresholds: HealthThresholds | None = None,
                 weight_names: Iterable[str] | None = None) -> None:
        self.thresholds = thresholds if thresholds is not None else HealthThresholds()
        self.weight_names = None if weight_names is None else frozenset(weight_names)
        self._layers: dict[str, _LayerStats] = {}
        self._reported: set[tuple[str, str]] = set()
        self._flags: dict[str, list[str]] = {"vanishing": [], "exploding": []}
        self._first_problem_step: int | None = None

    @classmethod
    def for_model(cls, model: nn.Module, thresholds: HealthThresholds | None = None) -> GradientHealthMonitor:
        """A monitor that judges the weight tensors (ndim >= 2) of ``model`` for vanishing."""
        return cls(thresholds, weight_names(model))

    def _is_weight(self, name: str) -> bool:
        return self.weight_names is None or name in self.weight_names

    def _step_reference(self, norms: dict[str, float]) -> tuple[float, str] | None:
        weights = [(value, name) for name, value in norms.items() if self._is_weight(name)]
        if not weights:
            return None
        if self.thresholds.reference == "output":
            value, name = weights[-1]
            return (value, f"output layer '{name}'") if math.isfinite(value) else None
        finite = [(value, name) for value, name in weights if math.isfinite(value)]
        if not finite:
            return None
        value, name = max(finite)
        return value, f"largest weight gradient '{name}'"

    def _vanishing(self, value: float, stats: _LayerStats,
                   step_reference: tuple[float, str] | None) -> str | None:
        if self.thresholds.reference == "initial":
            reference = None if stats.baseline is None else (stats.baseline, "its first norm")
        else:
            reference = step_reference
        if reference is None or not reference[0] > 0 or not math.isfinite(value):
            return None
        ref_value, ref_name = reference
        ratio = value / ref_value
        if ratio >= self.thresholds.vanishing_ratio:
            return None
        return (f"gradient norm {value:.3g} is {ratio:.3g} of {ref_name} ({ref_value:.3g}); "
                f"threshold {self.thresholds.vanishing_ratio:g}")

    def _exploding(self, value: float, stats: _LayerStats) -> str | None:
        if not math.isfinite(value):
            return f"gradient norm is {value}"
        ceiling = self.thresholds.exploding_absolute
        if ceiling is not None and value > ceiling:
            return f"gradient norm {value:.3g} is above the ceiling {ceiling:g}"
        factor = self.thresholds.exploding_factor
        if stats.baseline is not None and value > factor * stats.baseline:
            return (f"gradient norm {value:.3g} is {value / stats.baseline:.3g} times its first norm "
                    f"{stats.baseline:.3g}; threshold {factor:g}")
        return None

    def check(self, step: int, norms: Mapping[str, float]) -> list[dict]:
        """Judge one step's gradient norms (name -> ||grad||_2) and return the new events, each
        ``{"step", "kind": "vanishing" | "exploding", "layer", "detail"}``."""
        values = {name: float(value) for name, value in norms.items()}
        step_reference = self._step_reference(values)
        events = []
        for name, value in values.items():
            stats = self._layers.setdefault(name, _LayerStats(first=value, last=value))
            stats.observe(value)
            if stats.baseline is None and math.isfinite(value) and value > 0:
                stats.baseline = value
            found = {"exploding": self._exploding(value, stats)}
            if self._is_weight(name):
                found["vanishing"] = self._vanishing(value, stats, step_reference)
            for kind, detail in found.items():
                if detail is None:
                    continue
                if kind == "vanishing":
                    stats.vanishing_steps += 1
                else:
                    stats.exploding_steps += 1
                if (name, kind) in self._reported:
                    continue
                self._reported.add((name, kind))
                self._flags[kind].append(name)
                if self._first_problem_step is None:
                    self._first_problem_step = int(step)
                events.append({"step": int(step), "kind": kind, "layer": name, "detail": detail})
        return events

    def summary(self) -> dict:
        """Everything seen so far: ``{"first_problem_step", "layers": {name: {"first", "last",
        "min", "max", "vanishing_steps", "exploding_steps"}}, "flags": {"vanishing": [names],
        "exploding": [names]}}``. Norms that are not finite are None (JSON null); min and max
        are over the finite norms. Flag lists are in the order the layers were first flagged."""
        layers = {name: {"first": _finite_or_none(stats.first), "last": _finite_or_none(stats.last),
                         "min": stats.low, "max": stats.high, "vanishing_steps": stats.vanishing_steps,
                         "exploding_steps": stats.exploding_steps}
                  for name, stats in self._layers.items()}
        return {"first_problem_step": self._first_problem_step, "layers": layers,
                "flags": {kind: list(names) for kind, names in self._flags.items()}}

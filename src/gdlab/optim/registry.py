"""Registry of update rules: names -> torch.optim classes (or the project's line search) + defaults.

``weight_decay`` in torch rules changes the update, not the reported objective; to change the
objective use the explicit ``l2`` regularizer (:mod:`gdlab.optim.regularization`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import torch

from gdlab.errors import GdlabError, did_you_mean, unknown_name
from gdlab.optim.linesearch import ArmijoLineSearch

WEIGHT_DECAY_NOTE = "weight_decay changes the update only; --l2 changes the objective"


@dataclass(frozen=True)
class OptimizerSpec:
    """An update rule: its torch class, the hyper-parameters a user may set (with their
    defaults), and the constructor arguments the rule fixes (e.g. nesterov=True)."""

    name: str
    description: str
    optimizer_class: type[torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("gd", "plain gradient descent, theta -= lr * g (torch SGD, momentum 0)",
                      torch.optim.SGD, {"weight_decay": 0.0}, {"momentum": 0.0}),
        OptimizerSpec("momentum", "heavy-ball momentum (torch SGD, momentum 0.9)",
                      torch.optim.SGD, {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0}),
        OptimizerSpec("nesterov", "Nesterov momentum (torch SGD, momentum 0.9, nesterov=True)",
                      torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.0}, {"nesterov": True}),
        OptimizerSpec("adam", "Adam (torch Adam, betas (0.9, 0.999), eps 1e-8)", torch.optim.Adam,
                      {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}),
        OptimizerSpec("adamw", "Adam with decoupled weight decay (torch AdamW, weight_decay 0.01)",
                      torch.optim.AdamW,
                      {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False}),
        OptimizerSpec("rmsprop", "RMSprop (torch RMSprop, alpha 0.99, eps 1e-8, momentum 0)",
                      torch.optim.RMSprop,
                      {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0}),
        OptimizerSpec("adagrad", "Adagrad (torch Adagrad, eps 1e-10)", torch.optim.Adagrad,
                      {"lr_decay": 0.0, "eps": 1e-10, "initial_accumulator_value": 0.0, "weight_decay": 0.0}),
        OptimizerSpec("linesearch", "gradient descent with Armijo backtracking line search on the full-batch "
                      "loss; each step first tries grow x the last accepted step (initially lr), halving "
                      "until f drops by c*t*|g|^2; the accepted step is logged as lr", ArmijoLineSearch,
                      {"c": 1e-4, "shrink": 0.5, "grow": 2.0, "max_backtracks": 50, "max_lr": None}),
    )
}


def _number(field_name: str, value: Any, rule: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a float if it is a finite number for which ``ok`` holds (``rule`` says which)."""
    valid = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
    if not (valid and ok(float(value))):
        raise GdlabError(f"{field_name} must be a finite number {rule}, got {value!r}")
    return float(value)


def _ranged(rule: str, ok: Callable[[float], bool]) -> Callable[[str, Any], float]:
    return lambda field_name, value: _number(field_name, value, rule, ok)


_unit = _ranged("in [0, 1)", lambda v: 0.0 <= v < 1.0)
_open_unit = _ranged("in (0, 1)", lambda v: 0.0 < v < 1.0)
_positive = _ranged("> 0", lambda v: v > 0.0)
_non_negative = _ranged(">= 0", lambda v: v >= 0.0)
_cap = _ranged("> 0 (or null for no cap)", lambda v: v > 0.0)


def _flag(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GdlabError(f"{field_name} must be true or false, got {value!r}")
    return value


def _betas(field_name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise GdlabError(f"{field_name} must be a list of 2 numbers in [0, 1), got {value!r}")
    return (_unit(f"{field_name}[0]", value[0]), _unit(f"{field_name}[1]", value[1]))


def _max_backtracks(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise GdlabError(f"{field_name} must be an integer >= 0, got {value!r}")
    return int(value)


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "momentum": _unit, "dampening": _unit, "alpha": _unit, "betas": _betas, "eps": _positive,
    "weight_decay": _non_negative, "lr_decay": _non_negative, "initial_accumulator_value": _non_negative,
    "amsgrad": _flag, "centered": _flag, "c": _open_unit, "shrink": _open_unit,
    "grow": _ranged(">= 1", lambda v: v >= 1.0), "max_backtracks": _max_backtracks,
    "max_lr": lambda field_name, value: None if value is None else _cap(field_name, value),
}


def _spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise unknown_name("optimizer", name, OPTIMIZERS) from None


def optimizer_hyperparameters(name: str) -> dict[str, Any]:
    """Defaults of the hyper-parameters (other than lr) that optimizer `name` accepts (a copy)."""
    return dict(_spec(name).defaults)


def validate_hyperparameters(name: str, lr: float, **hparams: Any) -> dict[str, Any]:
    """Check lr and `hparams` for optimizer `name`; return all hyper-parameters, defaults filled
    in and normalised (floats, betas as a tuple). Raises GdlabError naming the field and range."""
    spec = _spec(name)
    lr = _positive("lr", lr)
    for key in hparams:
        if key not in spec.defaults:
            allowed = ", ".join(spec.defaults) or "none"
            raise GdlabError(f"unknown hyper-parameter '{key}' for optimizer '{name}'"
                             f"{did_you_mean(key, spec.defaults)}; allowed: {allowed}")
    values = {**spec.defaults, **hparams}
    checked = {key: _VALIDATORS[key](key, value) for key, value in values.items()}
    if spec.fixed.get("nesterov") and checked["momentum"] == 0.0:
        raise GdlabError("momentum must be in (0, 1) for optimizer 'nesterov', got 0")
    return {"lr": lr, **checked}


def build_optimizer(name: str, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float,
                    **hparams: Any) -> torch.optim.Optimizer:
    """Construct optimizer `name` (a key of OPTIMIZERS) over `params` with step size `lr` (> 0). `hparams` are
    the rule's extra hyper-parameters (see :func:`optimizer_hyperparameters`); unset ones take the registry
    defaults. Raises GdlabError for an unknown name, an unknown hyper-parameter or a value out of range."""
    spec = _spec(name)
    kwargs = validate_hyperparameters(name, lr, **hparams)
    return spec.optimizer_class(params, **kwargs, **spec.fixed)

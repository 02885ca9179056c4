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
        OptimizerSpec(
            "gd",
            "plain gradient descent, theta -= lr * g (torch SGD, momentum 0)",
            torch.optim.SGD,
            {"weight_decay": 0.0},
            {"momentum": 0.0},
        ),
        OptimizerSpec(
            "momentum",
            "heavy-ball momentum (torch SGD, momentum 0.9)",
            torch.optim.SGD,
            {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
        ),
        OptimizerSpec(
            "nesterov",
            "Nesterov momentum (torch SGD, momentum 0.9, nesterov=True)",
            torch.optim.SGD,
            {"momentum": 0.9, "weight_decay": 0.0},
            {"nesterov": True},
        ),
        OptimizerSpec(
            "adam",
            "Adam (torch Adam, betas (0.9, 0.999), eps 1e-8)",
            torch.optim.Adam,
            {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
        ),
        OptimizerSpec(
            "adamw",
            "Adam with decoupled weight decay (torch AdamW, weight_decay 0.01)",
            torch.optim.AdamW,
            {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False},
        ),
        OptimizerSpec(
            "rmsprop",
            "RMSprop (torch RMSprop, alpha 0.99, eps 1e-8, momentum 0)",
            torch.optim.RMSprop,
            {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
        ),
        OptimizerSpec(
            "adagrad",
            "Adagrad (torch Adagrad, eps 1e-10)",
            torch.optim.Adagrad,
            {"lr_decay": 0.0, "eps": 1e-10, "initial_accumulator_value": 0.0, "weight_decay": 0.0},
        ),
        OptimizerSpec(
            "linesearch",
            "gradient descent with Armijo backtracking line search on the full-batch loss; "
            "each step first tries grow x the last accepted step (initially lr), halving until "
            "f drops by c*t*|g|^2; the accepted step is logged as lr",
            ArmijoLineSearch,
            {"c": 1e-4, "shrink": 0.5, "grow": 2.0, "max_backtracks": 50, "max_lr": None},
        ),
    )
}


def _number(field_name: str, value: Any, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise GdlabError(f"{field_name} must be a finite number {rule}, got {value!r}")
    return float(value)


def _at_least(field_name: str, value: Any, low: float, rule: str) -> float:
    v = _number(field_name, value, rule)
    if v < low:
        raise GdlabError(f"{field_name} must be a finite number {rule}, got {value!r}")
    return v


def _above(field_name: str, value: Any, low: float, rule: str) -> float:
    v = _number(field_name, value, rule)
    if not v > low:
        raise GdlabError(f"{field_name} must be a finite number {rule}, got {value!r}")
    return v


def _unit(field_name: str, value: Any) -> float:
    v = _number(field_name, value, "in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise GdlabError(f"{field_name} must be a finite number in [0, 1), got {value!r}")
    return v


def _open_unit(field_name: str, value: Any) -> float:
    v = _number(field_name, value, "in (0, 1)")
    if not 0.0 < v < 1.0:
        raise GdlabError(f"{field_name} must be a finite number in (0, 1), got {value!r}")
    return v


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


def _optional_positive(field_name: str, value: Any) -> float | None:
    return None if value is None else _above(field_name, value, 0.0, "> 0 (or null for no cap)")


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "momentum": _unit,
    "dampening": _unit,
    "alpha": _unit,
    "betas": _betas,
    "eps": lambda f, v: _above(f, v, 0.0, "> 0"),
    "weight_decay": lambda f, v: _at_least(f, v, 0.0, ">= 0"),
    "lr_decay": lambda f, v: _at_least(f, v, 0.0, ">= 0"),
    "initial_accumulator_value": lambda f, v: _at_least(f, v, 0.0, ">= 0"),
    "amsgrad": _flag,
    "centered": _flag,
    "c": _open_unit,
    "shrink": _open_unit,
    "grow": lambda f, v: _at_least(f, v, 1.0, ">= 1"),
    "max_backtracks": _max_backtracks,
    "max_lr": _optional_positive,
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
    lr = _above("lr", lr, 0.0, "> 0")
    for key in hparams:
        if key not in spec.defaults:
            allowed = ", ".join(spec.defaults) or "none"
            raise GdlabError(
                f"unknown hyper-parameter '{key}' for optimizer '{name}'"
                f"{did_you_mean(key, spec.defaults)}; allowed: {allowed}"
            )
    values = {**spec.defaults, **hparams}
    checked = {key: _VALIDATORS[key](key, value) for key, value in values.items()}
    if spec.fixed.get("nesterov") and checked["momentum"] == 0.0:
        raise GdlabError("momentum must be in (0, 1) for optimizer 'nesterov', got 0")
    return {"lr": lr, **checked}


def build_optimizer(
    name: str, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float, **hparams: Any
) -> torch.optim.Optimizer:
    """Construct optimizer `name` (a key of OPTIMIZERS) over `params` with step size `lr` (> 0).

    `hparams` are the rule's extra hyper-parameters (see :func:`optimizer_hyperparameters`);
    unset ones take the registry defaults. Raises GdlabError for an unknown name, an unknown
    hyper-parameter or a value out of range.
    """
    spec = _spec(name)
    kwargs = validate_hyperparameters(name, lr, **hparams)
    return spec.optimizer_class(params, **kwargs, **spec.fixed)

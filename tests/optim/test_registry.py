"""Tests for gdlab.optim.registry: each name builds exactly the torch optimizer the docs promise."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from gdlab.errors import GdlabError
from gdlab.optim.linesearch import ArmijoLineSearch
from gdlab.optim.registry import OPTIMIZERS, build_optimizer, optimizer_hyperparameters

# The independent reference: the mapping stated in the optim contract, written out by hand.
HAND_BUILT: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "gd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.0),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=1e-8),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.99, eps=1e-8, momentum=0.0),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr),
}

NON_DEFAULT: dict[str, tuple[dict[str, Any], Callable[..., torch.optim.Optimizer]]] = {
    "gd": ({"weight_decay": 1e-3}, lambda p, lr: torch.optim.SGD(p, lr=lr, weight_decay=1e-3)),
    "momentum": (
        {"momentum": 0.5, "dampening": 0.1},
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, dampening=0.1),
    ),
    "nesterov": (
        {"momentum": 0.5},
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, nesterov=True),
    ),
    "adam": (
        {"betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True},
        lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.8, 0.99), eps=1e-6, amsgrad=True),
    ),
    "adamw": (
        {"weight_decay": 0.1, "betas": (0.5, 0.9)},
        lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.1, betas=(0.5, 0.9)),
    ),
    "rmsprop": (
        {"alpha": 0.9, "momentum": 0.5, "centered": True},
        lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.9, momentum=0.5, centered=True),
    ),
    "adagrad": (
        {"lr_decay": 0.01, "initial_accumulator_value": 0.1},
        lambda p, lr: torch.optim.Adagrad(p, lr=lr, lr_decay=0.01, initial_accumulator_value=0.1),
    ),
}

TORCH_RULES = [name for name in OPTIMIZERS if name != "linesearch"]


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)
    return model, X, y


def _assert_same_trajectory(make_ours: Callable, make_ref: Callable, steps: int = 5) -> None:
    model, X, y = _problem()
    twin = copy.deepcopy(model)
    ours, ref = make_ours(model.parameters()), make_ref(twin.parameters())
    for _ in range(steps):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            (0.5 * (m(X) - y).square().sum(1).mean()).backward()
            opt.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b)
    assert not torch.equal(next(model.parameters()), _problem()[0][0].weight)


def test_registry_lists_every_rule() -> None:
    """The eight rules are registered, each with a one-line description."""
    assert set(OPTIMIZERS) == {
        "gd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "linesearch"
    }
    assert set(HAND_BUILT) == set(TORCH_RULES)
    for name, spec in OPTIMIZERS.items():
        assert spec.name == name and spec.description and "\n" not in spec.description


@pytest.mark.parametrize("name", TORCH_RULES)
def test_build_optimizer_matches_hand_built_torch(name: str) -> None:
    """5 float64 steps of build_optimizer(name) are bit-identical (torch.equal) to the torch.optim
    class built by hand with the documented hyper-parameters."""
    lr = 0.05
    _assert_same_trajectory(
        lambda p: build_optimizer(name, p, lr), lambda p: HAND_BUILT[name](p, lr)
    )


@pytest.mark.parametrize("name", TORCH_RULES)
def test_non_default_hyperparameters_pass_through(name: str) -> None:
    """Non-default hyper-parameters reach torch: same steps as the hand-built optimizer."""
    hparams, make_ref = NON_DEFAULT[name]
    lr = 0.05
    _assert_same_trajectory(
        lambda p: build_optimizer(name, p, lr, **hparams), lambda p: make_ref(p, lr)
    )


def test_optimizer_hyperparameters_defaults() -> None:
    """Defaults are the documented ones, exclude lr, and are a copy the caller may change."""
    assert optimizer_hyperparameters("momentum")["momentum"] == 0.9
    assert optimizer_hyperparameters("adam")["betas"] == (0.9, 0.999)
    assert optimizer_hyperparameters("adamw")["weight_decay"] == 0.01
    assert optimizer_hyperparameters("rmsprop")["alpha"] == 0.99
    assert optimizer_hyperparameters("linesearch") == {
        "c": 1e-4, "shrink": 0.5, "grow": 2.0, "max_backtracks": 50, "max_lr": None
    }
    for name in OPTIMIZERS:
        assert "lr" not in optimizer_hyperparameters(name)
    optimizer_hyperparameters("gd")["weight_decay"] = 5.0
    assert optimizer_hyperparameters("gd")["weight_decay"] == 0.0
    with pytest.raises(GdlabError, match="unknown optimizer"):
        optimizer_hyperparameters("sgdd")


def test_build_linesearch() -> None:
    """'linesearch' builds ArmijoLineSearch with lr as the initial t_prev and the given options."""
    p = nn.Parameter(torch.zeros(2))
    opt = build_optimizer("linesearch", [p], 0.5, c=0.3, max_lr=4)
    assert isinstance(opt, ArmijoLineSearch)
    group = opt.param_groups[0]
    assert (group["lr"], group["c"], group["max_lr"], group["shrink"]) == (0.5, 0.3, 4.0, 0.5)


def test_unknown_optimizer_suggests() -> None:
    """'adm' is an unknown optimizer whose one-line error suggests 'adam' and lists the choices."""
    with pytest.raises(GdlabError, match="did you mean 'adam'") as info:
        build_optimizer("adm", [nn.Parameter(torch.zeros(1))], 0.1)
    message = str(info.value)
    assert "unknown optimizer 'adm'" in message and "linesearch" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "lr", "hparams", "field"),
    [
        ("gd", 0.0, {}, "lr"),
        ("gd", -0.1, {}, "lr"),
        ("gd", float("nan"), {}, "lr"),
        ("gd", float("inf"), {}, "lr"),
        ("gd", "0.1", {}, "lr"),
        ("gd", True, {}, "lr"),
        ("momentum", 0.1, {"momentum": 1.0}, "momentum"),
        ("momentum", 0.1, {"momentum": -0.1}, "momentum"),
        ("nesterov", 0.1, {"momentum": 0.0}, "momentum"),
        ("rmsprop", 0.1, {"momentum": 1.5}, "momentum"),
        ("adam", 0.1, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
        ("adam", 0.1, {"betas": [-0.1, 0.9]}, r"betas\[0\]"),
        ("adam", 0.1, {"betas": (0.9,)}, "betas"),
        ("adamw", 0.1, {"betas": "0.9"}, "betas"),
        ("adam", 0.1, {"eps": 0.0}, "eps"),
        ("rmsprop", 0.1, {"eps": -1e-8}, "eps"),
        ("adam", 0.1, {"weight_decay": -0.01}, "weight_decay"),
        ("adagrad", 0.1, {"weight_decay": float("nan")}, "weight_decay"),
        ("rmsprop", 0.1, {"alpha": 1.0}, "alpha"),
        ("rmsprop", 0.1, {"alpha": -0.5}, "alpha"),
        ("adam", 0.1, {"amsgrad": "yes"}, "amsgrad"),
        ("linesearch", 1.0, {"c": 0.0}, "c"),
        ("linesearch", 1.0, {"shrink": 1.0}, "shrink"),
        ("linesearch", 1.0, {"grow": 0.5}, "grow"),
        ("linesearch", 1.0, {"max_backtracks": -1}, "max_backtracks"),
        ("linesearch", 1.0, {"max_backtracks": 2.5}, "max_backtracks"),
        ("linesearch", 1.0, {"max_lr": 0.0}, "max_lr"),
    ],
)
def test_validation_errors_name_field_and_range(
    name: str, lr: Any, hparams: dict, field: str
) -> None:
    """Each out-of-range value is a one-line GdlabError naming the field and the allowed range."""
    with pytest.raises(GdlabError, match=field) as info:
        build_optimizer(name, [nn.Parameter(torch.zeros(1))], lr, **hparams)
    message = str(info.value)
    assert "\n" not in message
    ranges = ("[0, 1)", "(0, 1)", "> 0", ">= 0", ">= 1", "true or false", "list of 2")
    assert any(r in message for r in ranges)


def test_unknown_hyperparameter_lists_allowed_ones() -> None:
    """A misspelt hyper-parameter is a GdlabError with a suggestion and the allowed names."""
    with pytest.raises(GdlabError) as info:
        build_optimizer("momentum", [nn.Parameter(torch.zeros(1))], 0.1, momentm=0.5)
    message = str(info.value)
    assert "'momentm'" in message and "did you mean 'momentum'" in message
    assert "allowed: momentum, dampening, weight_decay" in message and "\n" not in message


def test_weight_decay_rejected_for_linesearch() -> None:
    """The line search has no weight_decay (use the l2 regularizer); gd does not take momentum."""
    with pytest.raises(GdlabError, match="'weight_decay' for optimizer 'linesearch'"):
        build_optimizer("linesearch", [nn.Parameter(torch.zeros(1))], 1.0, weight_decay=0.1)
    with pytest.raises(GdlabError, match="'momentum' for optimizer 'gd'"):
        build_optimizer("gd", [nn.Parameter(torch.zeros(1))], 0.1, momentum=0.9)

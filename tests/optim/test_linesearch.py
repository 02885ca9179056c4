"""Tests for ArmijoLineSearch: closed-form step sizes on a quadratic, logistic regression against
scikit-learn, and the no-step and checkpoint cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gdlab.optim.linesearch import ArmijoLineSearch
from gdlab.optim.losses import get_loss
from gdlab.optim.regularization import regularization_term


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eigenvalues = torch.logspace(-1, 1, d, dtype=torch.float64)
    return q @ torch.diag(eigenvalues) @ q.T


def _quadratic(seed: int = 0, d: int = 6) -> tuple[torch.Tensor, nn.Parameter]:
    A = _spd(d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
    return A, x


def _f(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ A @ x


def _step(opt: ArmijoLineSearch, A: torch.Tensor, x: nn.Parameter, pass_loss: bool = True) -> float:
    opt.zero_grad()
    loss = _f(A, x)
    loss.backward()
    with torch.no_grad():
        return opt.step(lambda: float(_f(A, x)), float(loss) if pass_loss else None)


@pytest.mark.parametrize(
    ("lr", "c", "grow", "max_lr"),
    [(1e-3, 1e-4, 2.0, None), (5.0, 0.3, 1.5, None), (1e-2, 0.1, 3.0, 0.5)],
)
def test_quadratic_steps_match_closed_form(
    lr: float, c: float, grow: float, max_lr: float | None
) -> None:
    """On f = 0.5 x^T A x (A SPD, float64) Armijo holds iff t <= 2(1-c) g^T g / g^T A g, so the
    accepted step is the largest t_start * shrink^k below that bound, t_start = min(max_lr,
    grow * t_prev) (reference: this closed form, run alongside for 40 steps)."""
    A, x = _quadratic()
    shrink = 0.5
    opt = ArmijoLineSearch([x], lr=lr, c=c, shrink=shrink, grow=grow, max_lr=max_lr)
    t_prev = lr
    grew = backtracked = 0
    for _ in range(40):
        x_before = x.detach().clone()
        g = A @ x_before
        bound = 2 * (1 - c) * float(g @ g) / float(g @ A @ g)
        t = min(max_lr or math.inf, t_prev * grow)
        k = 0
        while t > bound:
            t *= shrink
            k += 1
        new_loss = _step(opt, A, x)
        assert opt.state_info["last_step_size"] == pytest.approx(t, rel=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(t, rel=1e-12)
        assert opt.state_info["last_evaluations"] == k + 1
        torch.testing.assert_close(x.detach(), x_before - t * g, rtol=1e-12, atol=1e-15)
        assert new_loss == pytest.approx(float(_f(A, x.detach())), rel=1e-12)
        grew += k == 0 and t > t_prev
        backtracked += k > 0
        t_prev = t
    assert backtracked > 0
    assert grew > 0 or max_lr is not None


def test_armijo_holds_and_accepted_step_is_maximal() -> None:
    """At every accepted step f(x - t g) <= f(x) - c t ||g||^2, and after a backtrack t / shrink
    violates it (reference: direct evaluation of f at both points)."""
    A, x = _quadratic(seed=3)
    c, shrink = 0.2, 0.5
    opt = ArmijoLineSearch([x], lr=0.05, c=c, shrink=shrink)
    backtracks = 0
    for _ in range(30):
        x0 = x.detach().clone()
        g = A @ x0
        f0, gg = float(_f(A, x0)), float(g @ g)
        _step(opt, A, x)
        t = opt.state_info["last_step_size"]
        assert float(_f(A, x0 - t * g)) <= f0 - c * t * gg
        if opt.state_info["last_evaluations"] > 1:
            backtracks += 1
            big = t / shrink
            assert float(_f(A, x0 - big * g)) > f0 - c * big * gg
    assert backtracks > 0


def test_evaluation_counters() -> None:
    """Without `loss` the step evaluates f(x) once more; total_evaluations sums the steps."""
    A, x = _quadratic()
    opt = ArmijoLineSearch([x], lr=1e-3)
    _step(opt, A, x, pass_loss=True)
    first = opt.state_info["last_evaluations"]
    _step(opt, A, x, pass_loss=False)
    second = opt.state_info["last_evaluations"]
    assert first == 1 and second == 2
    assert opt.state_info["total_evaluations"] == first + second


def test_logistic_regression_reaches_sklearn_objective() -> None:
    """Full-batch line search on standardised breast_cancer (float64, bce + l2 on the weights)
    decreases the loss monotonically and reaches the objective of scikit-learn's
    LogisticRegression (C = 1 / (l2 N), unpenalised intercept, tol 1e-12) within 1e-4 relative
    in 300 steps (it needs about 130)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    n, l2 = X.shape[0], 1e-3
    clf = LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=10_000).fit(X, y)
    w, b = clf.coef_.ravel(), clf.intercept_[0]
    z = X @ w + b
    reference = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], 1).double()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    bce = get_loss("bce")

    def objective() -> torch.Tensor:
        return bce(model(Xt), yt) + regularization_term(model, l2=l2)

    opt = ArmijoLineSearch(model.parameters(), lr=1.0)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        with torch.no_grad():
            losses.append(opt.step(lambda: float(objective()), float(loss)))
        assert opt.state_info["last_status"] == "accepted"
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert (losses[-1] - reference) / reference < 1e-4
    assert losses[-1] >= reference * (1 - 1e-9)


def test_zero_gradient_takes_no_step() -> None:
    """With g == 0 the parameters stay, the step size is 0 and the closure is not called."""
    x = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    x.grad = torch.zeros_like(x)
    opt = ArmijoLineSearch([x], lr=1.0)

    def closure() -> float:
        raise AssertionError("closure must not be called")

    assert opt.step(closure, 3.0) == 3.0
    assert torch.equal(x.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert opt.state_info["last_step_size"] == 0.0
    assert opt.state_info["last_status"] == "zero_gradient"
    assert opt.param_groups[0]["t_prev"] == 1.0


def test_no_decrease_restores_parameters() -> None:
    """If no trial step satisfies Armijo within max_backtracks, the parameters are restored
    exactly, no step is recorded, and the next search starts below the smallest step tried."""
    x = nn.Parameter(torch.tensor([0.3, 0.7], dtype=torch.float64))
    x.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt = ArmijoLineSearch([x], lr=1.0, shrink=0.5, grow=2.0, max_backtracks=3)
    result = opt.step(lambda: 5.0, 1.0)
    assert result == 1.0
    assert torch.equal(x.detach(), torch.tensor([0.3, 0.7], dtype=torch.float64))
    info = opt.state_info
    assert info["last_step_size"] == 0.0 and info["last_evaluations"] == 4
    assert info["last_status"] == "no_decrease" and info["failures"] == 1
    assert opt.param_groups[0]["lr"] == 0.0
    assert opt.param_groups[0]["t_prev"] == 2.0 * 0.5**3


def test_state_dict_round_trip() -> None:
    """A fresh optimizer loaded from state_dict continues with the same t_prev and counters, so the
    next steps equal those of the original (reference: the uninterrupted run)."""
    A, x = _quadratic(seed=5)
    opt = ArmijoLineSearch([x], lr=1e-2, c=0.1)
    for _ in range(4):
        _step(opt, A, x)
    saved = opt.state_dict()
    x_copy = nn.Parameter(x.detach().clone())
    restored = ArmijoLineSearch([x_copy], lr=123.0, c=0.1)
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["t_prev"] == opt.param_groups[0]["t_prev"]
    assert restored.state_info == opt.state_info
    for _ in range(3):
        _step(opt, A, x)
        _step(restored, A, x_copy)
        assert torch.equal(x.detach(), x_copy.detach())
        assert restored.state_info == opt.state_info


def test_rejects_parameter_groups() -> None:
    """One step size serves all parameters, so several parameter groups are refused."""
    with pytest.raises(ValueError, match="one parameter group"):
        ArmijoLineSearch(
            [{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [nn.Parameter(torch.ones(1))]}]
        )

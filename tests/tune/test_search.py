"""Learning-rate search against closed-form optima."""

import math

import pytest

from gdlab.errors import GdlabError
from gdlab.tune import learning_rate_grid, search_learning_rate

LAM, X0 = 4.0, 3.0


def quadratic_after_k_steps(lr, k=3):
    """GD on f(x) = lam/2 x^2 from x0: f(x_k) = lam/2 (1 - lr*lam)^(2k) x0^2, None once it diverges."""
    factor = (1 - lr * LAM) ** (2 * k)
    value = 0.5 * LAM * factor * X0**2
    return None if abs(1 - lr * LAM) > 1.0 else value


def test_grid_search_finds_one_over_l_on_a_quadratic():
    """On f = lam/2 x^2 the loss after k GD steps is minimised (to 0) exactly at lr = 1/lam; a
    9-point log grid centred on 1/lam finds it, and the trials above 2/lam are pruned as diverged."""
    low, high = 0.25 / LAM, 4.0 / LAM
    res = search_learning_rate("grid", 9, low, high, lambda n, lr: quadratic_after_k_steps(lr))
    assert res.best_lr == pytest.approx(1.0 / LAM, rel=1e-12)
    assert sorted(lr for _, lr, _ in res.trials) == pytest.approx(learning_rate_grid(low, high, 9))
    diverged = [lr for _, lr, v in res.trials if v is None]
    assert diverged and all(lr > 2.0 / LAM for lr in diverged)


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_random_and_tpe_stay_in_range_and_are_seeded(kind):
    """Random and TPE sample inside [low, high]; the same seed gives the same trials; the best is
    within a factor 1.5 of 1/lam after 25 trials."""
    f = lambda n, lr: quadratic_after_k_steps(lr)
    a = search_learning_rate(kind, 25, 0.01, 1.0, f, seed=3)
    b = search_learning_rate(kind, 25, 0.01, 1.0, f, seed=3)
    assert a.trials == b.trials
    assert all(0.01 <= lr <= 1.0 for _, lr, _ in a.trials)
    assert abs(math.log(a.best_lr * LAM)) < math.log(1.5)


def test_all_diverged_gives_no_best():
    """When every trial diverges there is no best learning rate."""
    res = search_learning_rate("grid", 4, 1.0, 10.0, lambda n, lr: None)
    assert res.best_lr is None and all(v is None for _, _, v in res.trials)


def test_bad_search_arguments():
    """Unknown sampler and an empty range are user errors."""
    with pytest.raises(GdlabError, match="did you mean 'grid'"):
        search_learning_rate("gird", 3, 0.1, 1.0, lambda n, lr: 1.0)
    with pytest.raises(GdlabError):
        search_learning_rate("grid", 3, 1.0, 0.1, lambda n, lr: 1.0)

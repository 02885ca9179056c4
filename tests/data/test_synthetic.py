"""Tests for gdlab.data.synthetic: determinism, shapes, and each generator's defining property."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from gdlab.data import synthetic

GENERATORS = [
    synthetic.make_linreg,
    synthetic.make_blobs2d,
    synthetic.make_spirals,
    synthetic.make_adding,
    synthetic.make_sine,
]


@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_same_seed_gives_identical_arrays_and_other_seed_differs(make):
    """Determinism; reference: numpy.array_equal between two calls, on X and y."""
    X1, y1 = make(50, seed=7)
    X2, y2 = make(50, seed=7)
    X3, _ = make(50, seed=8)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_generators_leave_the_global_numpy_random_state_alone(make):
    """Generators use their own Generator; reference: numpy.random.get_state before and after."""
    before = np.random.get_state()[1].copy()
    make(20, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)


def test_linreg_least_squares_recovers_slope_3_and_intercept_2():
    """y = 3x + 2 + N(0, 1); reference: numpy.linalg.lstsq on n = 2000 samples.

    Standard errors are about 0.04 (slope) and 0.045 (intercept); the tolerance is 5 of them.
    """
    X, y = synthetic.make_linreg(2000, seed=0)
    assert X.shape == (2000, 1) and y.shape == (2000, 1)
    assert X.min() >= 0.0 and X.max() <= 2.0
    A = np.hstack([X, np.ones_like(X)])
    (slope, intercept), *_ = np.linalg.lstsq(A, y[:, 0], rcond=None)
    assert slope == pytest.approx(3.0, abs=0.2)
    assert intercept == pytest.approx(2.0, abs=0.25)
    residual_std = np.std(y[:, 0] - A @ np.array([slope, intercept]))
    assert residual_std == pytest.approx(1.0, abs=0.1)


def test_adding_target_is_the_sum_of_the_two_marked_values():
    """Adding problem; reference: a per-sample loop that finds the markers and sums their values."""
    X, y = synthetic.make_adding(300, seed=3, seq_len=30)
    assert X.shape == (300, 30, 2) and y.shape == (300, 1)
    for values, markers, target in zip(X[:, :, 0], X[:, :, 1], y[:, 0]):
        marked = [t for t in range(30) if markers[t] == 1.0]
        assert len(marked) == 2 and set(np.unique(markers)) == {0.0, 1.0}
        assert marked[0] < 15 <= marked[1]
        assert target == values[marked[0]] + values[marked[1]]
    assert X[:, :, 0].min() >= 0.0 and X[:, :, 0].max() <= 1.0


def test_sine_target_continues_the_wave():
    """Next value of sin(omega t + phase); reference: the recurrence x[t+1] = 2 cos(omega) x[t] - x[t-1],
    with 2 cos(omega) fitted by least squares on each noiseless window."""
    X, y = synthetic.make_sine(100, seed=4, window=20, noise_std=0.0)
    assert X.shape == (100, 20, 1) and y.shape == (100, 1)
    for x, target in zip(X[:, :, 0], y[:, 0]):
        c, *_ = np.linalg.lstsq(x[1:-1, None], x[2:] + x[:-2], rcond=None)
        assert target == pytest.approx(c[0] * x[-1] - x[-2], abs=1e-9)
        assert 2 * np.cos(1.5) - 1e-9 <= c[0] <= 2 * np.cos(0.5) + 1e-9


def test_sine_observation_noise_has_the_requested_std():
    """Noise on the inputs only; reference: same seed with noise_std=0 gives the clean waves."""
    X_noisy, y_noisy = synthetic.make_sine(2000, seed=5, noise_std=0.05)
    X_clean, y_clean = synthetic.make_sine(2000, seed=5, noise_std=0.0)
    assert np.array_equal(y_noisy, y_clean)
    assert np.std(X_noisy - X_clean) == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("make", [synthetic.make_blobs2d, synthetic.make_spirals], ids=lambda f: f.__name__)
def test_binary_generators_are_balanced(make):
    """Two classes with counts differing by at most one; reference: numpy.bincount."""
    X, y = make(301, seed=2)
    assert X.shape == (301, 2) and y.dtype == np.int64
    counts = np.bincount(y)
    assert len(counts) == 2 and abs(counts[0] - counts[1]) <= 1


def test_spirals_need_a_nonlinear_model_and_blobs_do_not():
    """Reference: scikit-learn's LogisticRegression (linear) and 5-nearest-neighbours, scored on
    held-out samples: spirals defeat the linear model but not k-NN; blobs are linearly separable
    up to their overlap (Bayes accuracy about 0.93)."""
    X, y = synthetic.make_spirals(1200, seed=0)
    linear = LogisticRegression().fit(X[:800], y[:800]).score(X[800:], y[800:])
    knn = KNeighborsClassifier(5).fit(X[:800], y[:800]).score(X[800:], y[800:])
    assert linear < 0.75 and knn > 0.95
    X, y = synthetic.make_blobs2d(1200, seed=0)
    linear = LogisticRegression().fit(X[:800], y[:800]).score(X[800:], y[800:])
    assert 0.88 < linear < 0.98

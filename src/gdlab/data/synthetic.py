"""Seeded generators of synthetic data sets, returned as numpy arrays.

Every generator takes the number of samples `n` and a `seed`, draws from its own
`numpy.random.default_rng(seed)` (never the global state), and returns `(X, y)`: X float64,
y int64 labels (classification) or float64 targets of shape (n, k) (regression). The same
arguments give bit-identical arrays.
"""

from __future__ import annotations

import numpy as np


def make_linreg(
    n: int, *, seed: int = 0, slope: float = 3.0, intercept: float = 2.0, noise_std: float = 1.0,
    x_low: float = 0.0, x_high: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear regression data y = slope * x + intercept + noise.

    x ~ Uniform(x_low, x_high), noise ~ N(0, noise_std^2). Returns X: (n, 1), y: (n, 1).
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(x_low, x_high, size=(n, 1))
    y = slope * x + intercept + noise_std * rng.standard_normal((n, 1))
    return x, y


def make_blobs2d(
    n: int, *, seed: int = 0, distance: float = 3.0, std: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Two isotropic Gaussian blobs in 2-D, one per class, centres `distance` apart on the diagonal.

    Classes are balanced (counts differ by at most one) and shuffled. The blobs overlap for the
    default distance 3 and std 1 (Bayes error about 7 %), so logistic regression has a finite
    optimum. Returns X: (n, 2), y: (n,) int64 in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    centre = np.full(2, distance / (2.0 * np.sqrt(2.0)))
    sign = np.where(y == 1, 1.0, -1.0)[:, None]
    X = sign * centre + std * rng.standard_normal((n, 2))
    return X, y


def make_spirals(
    n: int, *, seed: int = 0, turns: float = 1.5, noise_std: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals (classes 0 and 1), the second the first rotated by 180 degrees.

    A point at position t ~ Uniform(0, 1) along its arm has radius t and angle
    pi/4 + 2*pi*turns*t, plus N(0, noise_std^2) noise on each coordinate; adjacent arms are
    about 1/(2*turns) apart. Classes are balanced and shuffled. Returns X: (n, 2), y: (n,) int64.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    t = rng.uniform(0.0, 1.0, size=n)
    angle = np.pi / 4 + 2.0 * np.pi * turns * t + np.pi * y
    X = t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    X = X + noise_std * rng.standard_normal((n, 2))
    return X, y


def make_adding(n: int, *, seed: int = 0, seq_len: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter and Schmidhuber 1997, in the form of Le et al. 2015).

    Channel 0 holds Uniform[0, 1] values; channel 1 is 1 at exactly two positions, one drawn from
    the first half of the sequence and one from the second half (so the dependency always spans
    the sequence), and 0 elsewhere. The target is the sum of the two marked values.
    Returns X: (n, seq_len, 2), y: (n, 1). Requires seq_len >= 2.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(n, seq_len))
    half = seq_len // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, seq_len, size=n)
    markers, rows = np.zeros((n, seq_len)), np.arange(n)
    markers[rows, first] = markers[rows, second] = 1.0
    X = np.stack([values, markers], axis=2)
    y = (values[rows, first] + values[rows, second])[:, None]
    return X, y


def make_sine(
    n: int, *, seed: int = 0, window: int = 20, omega_low: float = 0.5, omega_high: float = 1.5,
    noise_std: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Next-value forecasting of sine waves.

    Each sample is a wave sin(omega * t + phase) at integer times t = 0..window, with
    omega ~ Uniform(omega_low, omega_high) (radians per step) and phase ~ Uniform(0, 2*pi).
    The input is the first `window` values plus N(0, noise_std^2) observation noise; the target
    is the noiseless value at t = window, so a perfect forecaster reaches zero loss.
    Returns X: (n, window, 1), y: (n, 1).
    """
    rng = np.random.default_rng(seed)
    omega = rng.uniform(omega_low, omega_high, size=(n, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
    t = np.arange(window + 1, dtype=np.float64)[None, :]
    wave = np.sin(omega * t + phase)
    X = wave[:, :window] + noise_std * rng.standard_normal((n, window))
    y = wave[:, window:]
    return X[:, :, None], y

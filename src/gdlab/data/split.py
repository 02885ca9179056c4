"""Deterministic train/test split, subsampling, standardisation with training statistics, and the
conversion of the resulting numpy arrays to a validated Dataset."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from gdlab.data.dataset import Dataset, validate_dataset
from gdlab.errors import GdlabError

MAX_SEED = 2**32 - 1

# scikit-learn is imported inside the functions that use it: importing it costs about a second,
# which every `gdlab` command would otherwise pay, even `gdlab list`.


def is_integer(value: object) -> bool:
    """Whether `value` is an integer and not a bool (True would otherwise count as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed: int) -> None:
    """Raise GdlabError unless `seed` is an integer in [0, 2**32 - 1] (what numpy and
    scikit-learn accept)."""
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise GdlabError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")


def check_test_fraction(test_fraction: float) -> None:
    """Raise GdlabError unless 0 <= test_fraction < 1."""
    real = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)
    if not (real and math.isfinite(test_fraction) and 0 <= test_fraction < 1):
        raise GdlabError(
            f"test_fraction must be a number with 0 <= test_fraction < 1, got {test_fraction!r}"
        )


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """Return (n_train, n_test) for `n` samples, rounding the test count up as scikit-learn does.

    Raises GdlabError when the training split would be empty.
    """
    n_test = math.ceil(test_fraction * n) if test_fraction > 0 else 0
    n_train = n - n_test
    if n_train < 1:
        raise GdlabError(
            f"test_fraction={test_fraction} leaves no training samples out of {n}; "
            f"use a smaller test_fraction (0 <= test_fraction < 1) or more samples"
        )
    return n_train, n_test


def _stratify_labels(y: np.ndarray, n_train: int, n_test: int) -> np.ndarray | None:
    """The labels to stratify on, or None where a stratified split of these sizes is impossible
    (a class with one sample, or fewer samples on a side than there are classes)."""
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(counts):
        return None
    return y


def split_train_test(
    X: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split (X, y) into (X_train, X_test, y_train, y_test), deterministically for a given seed.

    X: (N, ...), y: (N, ...). The test split holds ceil(test_fraction * N) samples; with
    test_fraction = 0 it is empty and the training split keeps the original order. With
    `stratify` (classification, y: (N,) labels) class proportions are kept in both splits, unless
    the split is too small to hold every class, when it falls back to a plain random split.
    """
    from sklearn.model_selection import train_test_split

    n_train, n_test = split_sizes(len(X), test_fraction)
    if n_test == 0:
        return X, X[:0], y, y[:0]
    labels = _stratify_labels(y, n_train, n_test) if stratify else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=n_test, train_size=n_train, random_state=seed, stratify=labels
    )
    return X_train, X_test, y_train, y_test


def subsample(
    X: np.ndarray, y: np.ndarray, n: int, *, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Keep `n` of the N samples of (X, y), chosen deterministically by `seed`.

    Stratified by label when `stratify` and possible. With n = N the arrays are returned as is.
    """
    from sklearn.model_selection import train_test_split

    if n >= len(X):
        return X, y
    labels = _stratify_labels(y, n, len(X) - n) if stratify else None
    X_kept, _, y_kept, _ = train_test_split(
        X, y, train_size=n, test_size=len(X) - n, random_state=seed, stratify=labels
    )
    return X_kept, y_kept


def fit_standardization(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over the samples (axis 0) of X_train: (N, ...).

    Computed in float64. A feature that is constant on the training split gets its value as mean
    and std 1, so it maps to exactly 0 instead of dividing by zero. Returns two arrays of shape
    X_train.shape[1:].
    """
    X = np.asarray(X_train, dtype=np.float64)
    # Compare max and min rather than std with 0: rounding in the mean can make the std of a
    # constant column a tiny positive number.
    constant = X.max(axis=0) == X.min(axis=0)
    return np.where(constant, X[0], X.mean(axis=0)), np.where(constant, 1.0, X.std(axis=0))


def standardize(
    X_train: np.ndarray, X_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardise both splits with the training split's per-feature statistics.

    Returns (X_train_std, X_test_std, mean, std), all float64; see fit_standardization.
    """
    mean, std = fit_standardization(X_train)
    X_train = (np.asarray(X_train, dtype=np.float64) - mean) / std
    X_test = (np.asarray(X_test, dtype=np.float64) - mean) / std
    return X_train, X_test, mean, std


def arrays_to_dataset(
    name: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
    task_type: str, num_classes: int | None = None, dtype: torch.dtype = torch.float32,
    image_shape: tuple[int, ...] | None = None, description: str = "",
) -> Dataset:
    """Wrap numpy splits as a validated Dataset: inputs and regression targets as `dtype`,
    classification labels as int64. Raises GdlabError (from validate_dataset) on bad data."""

    def floats(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float64, order="C")).to(dtype)

    def targets(a: np.ndarray) -> torch.Tensor:
        if task_type == "classification":
            return torch.from_numpy(np.array(a, dtype=np.int64, order="C"))
        return floats(a)

    ds = Dataset(
        name=name, X_train=floats(X_train), y_train=targets(y_train), X_test=floats(X_test),
        y_test=targets(y_test), task_type=task_type, num_classes=num_classes, image_shape=image_shape,
        description=description,
    )
    validate_dataset(ds)
    return ds

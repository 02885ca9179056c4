"""Tests for gdlab.data.split: deterministic stratified splits and training-statistics standardisation."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from gdlab.data import load_task
from gdlab.data.split import (
    fit_standardization,
    split_train_test,
    standardize,
    subsample,
)
from gdlab.errors import GdlabError


@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


def test_stratified_split_keeps_class_proportions(digits):
    """Per-class test counts within 1 of test_fraction * class count, and equal to scikit-learn's
    stratified train_test_split with the same seed (reference)."""
    X, y = digits
    X_train, X_test, y_train, y_test = split_train_test(X, y, test_fraction=0.25, seed=3, stratify=True)
    *_, ref_train, ref_test = train_test_split(X, y, test_size=0.25, random_state=3, stratify=y)
    counts, test_counts = np.bincount(y), np.bincount(y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * counts) <= 1)
    assert np.all(np.abs(test_counts - np.bincount(ref_test, minlength=10)) <= 1)
    assert len(y_test) == len(ref_test) and len(y_train) == len(ref_train)
    assert len(X_train) + len(X_test) == len(X)


def test_split_is_deterministic_and_partitions_the_samples(digits):
    """Same seed, same split; the two splits hold every sample once. Reference: sorted row ids."""
    X, y = digits
    ids = np.arange(len(X))
    a = split_train_test(ids, y, test_fraction=0.2, seed=0, stratify=True)
    b = split_train_test(ids, y, test_fraction=0.2, seed=0, stratify=True)
    c = split_train_test(ids, y, test_fraction=0.2, seed=1, stratify=True)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(np.sort(np.concatenate([a[0], a[1]])), ids)
    assert np.array_equal(y[a[0]], a[2]) and np.array_equal(y[a[1]], a[3])


def test_zero_test_fraction_gives_empty_test_split():
    """test_fraction = 0 keeps every sample, in order, for training; reference: the input arrays."""
    X, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    X_train, X_test, y_train, y_test = split_train_test(X, y, test_fraction=0.0, seed=0, stratify=True)
    assert np.array_equal(X_train, X) and np.array_equal(y_train, y)
    assert X_test.shape == (0, 2) and y_test.shape == (0,)


def test_split_that_leaves_no_training_sample_is_an_error():
    """ceil(0.9 * 2) = 2 test samples leaves none to train on; reference: the rounding rule."""
    with pytest.raises(GdlabError, match="test_fraction"):
        split_train_test(np.zeros((2, 1)), np.array([0, 1]), test_fraction=0.9, seed=0, stratify=True)


def test_split_falls_back_to_random_when_stratification_is_impossible():
    """A class with one sample cannot be stratified (scikit-learn raises); we split at random."""
    y = np.array([0, 0, 0, 0, 0, 1])
    X = np.arange(6.0)[:, None]
    with pytest.raises(ValueError):
        train_test_split(X, y, test_size=2, random_state=0, stratify=y)
    X_train, X_test, _, _ = split_train_test(X, y, test_fraction=0.3, seed=0, stratify=True)
    assert len(X_train) == 4 and len(X_test) == 2


def test_subsample_is_stratified_and_deterministic(digits):
    """Keeps n samples with per-class counts within 1 of n * class share; reference: numpy.bincount."""
    X, y = digits
    Xa, ya = subsample(X, y, 500, seed=0, stratify=True)
    Xb, yb = subsample(X, y, 500, seed=0, stratify=True)
    assert Xa.shape == (500, 64) and np.array_equal(Xa, Xb) and np.array_equal(ya, yb)
    assert np.all(np.abs(np.bincount(ya) - 500 * np.bincount(y) / len(y)) <= 1)


def test_standardisation_gives_zero_mean_unit_std_and_uses_train_statistics():
    """Train split: mean 0, std 1 (reference: numpy float64 statistics); test split: equal to
    scikit-learn's StandardScaler fitted on the train split."""
    rng = np.random.default_rng(0)
    X_train = rng.normal(5.0, 3.0, size=(200, 4)) * np.array([1.0, 10.0, 0.1, 100.0])
    X_test = rng.normal(5.0, 3.0, size=(50, 4))
    Z_train, Z_test, mean, std = standardize(X_train, X_test)
    assert np.allclose(Z_train.mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(Z_train.std(axis=0), 1.0, atol=1e-12)
    scaler = StandardScaler().fit(X_train)
    assert np.allclose(Z_test, scaler.transform(X_test), rtol=1e-12, atol=1e-12)
    assert np.allclose(mean, scaler.mean_) and np.allclose(std, scaler.scale_)


def test_constant_column_gets_std_one_and_maps_to_zero():
    """A column constant on the train split is shifted, not divided by 0; reference: StandardScaler,
    which also uses scale 1 there."""
    X_train = np.column_stack([np.full(10, 0.1), np.arange(10.0)])
    X_test = np.array([[0.3, 4.0]])
    mean, std = fit_standardization(X_train)
    assert std[0] == 1.0 and mean[0] == 0.1
    Z_train, Z_test, _, _ = standardize(X_train, X_test)
    assert np.all(Z_train[:, 0] == 0.0)
    assert np.allclose(Z_test, StandardScaler().fit(X_train).transform(X_test))


def test_load_task_standardises_with_train_statistics_only():
    """digits, float64: standardised splits equal StandardScaler fitted on the raw train split
    (reference), which the same seed reproduces with standardize=False."""
    std = load_task("digits", seed=2, standardize=True, dtype=torch.float64)
    raw = load_task("digits", seed=2, standardize=False, dtype=torch.float64)
    scaler = StandardScaler().fit(raw.X_train.numpy())
    assert np.allclose(std.X_train.numpy(), scaler.transform(raw.X_train.numpy()), atol=1e-10)
    assert np.allclose(std.X_test.numpy(), scaler.transform(raw.X_test.numpy()), atol=1e-10)
    assert torch.equal(std.y_train, raw.y_train)


def test_diabetes_target_is_standardised_with_train_statistics():
    """diabetes: y_train has mean 0 and std 1; y_test = (raw - train mean) / train std.
    Reference: numpy statistics of the raw targets (standardize=False)."""
    std = load_task("diabetes", standardize=True, dtype=torch.float64)
    raw = load_task("diabetes", standardize=False, dtype=torch.float64)
    y_train, y_test = raw.y_train.numpy(), raw.y_test.numpy()
    assert y_train.mean() > 100  # raw targets are in the hundreds
    assert std.y_train.numpy().mean() == pytest.approx(0.0, abs=1e-12)
    assert std.y_train.numpy().std() == pytest.approx(1.0, abs=1e-12)
    expected = (y_test - y_train.mean(axis=0)) / y_train.std(axis=0)
    assert np.allclose(std.y_test.numpy(), expected, atol=1e-12)


def test_synthetic_regression_targets_are_never_standardised():
    """linreg with standardize=True: X changes, y does not; reference: the same load unstandardised."""
    std = load_task("linreg", standardize=True, dtype=torch.float64)
    raw = load_task("linreg", standardize=False, dtype=torch.float64)
    assert torch.equal(std.y_train, raw.y_train) and torch.equal(std.y_test, raw.y_test)
    assert std.X_train.mean().abs() < 1e-12 and raw.X_train.mean() > 0.5

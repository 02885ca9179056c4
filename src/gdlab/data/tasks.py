"""The task registry: named data sets with their default model, loss and preprocessing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from gdlab.data import bundled, synthetic
from gdlab.data.dataset import Dataset
from gdlab.data.split import (arrays_to_dataset, check_seed, check_test_fraction, is_integer,
                              split_train_test, subsample)
from gdlab.data.split import standardize as standardize_splits
from gdlab.errors import GdlabError, unknown_name


@dataclass(frozen=True)
class TaskSpec:
    """A named task: where its data comes from and what to train on it by default."""

    name: str
    description: str
    task_type: str
    default_model: str
    default_loss: str
    default_n_samples: int | None
    standardize: bool
    loader: Callable[..., Dataset]


def _to_dataset(
    spec: TaskSpec, X: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float, standardize: bool,
    dtype: torch.dtype, image_shape: tuple[int, ...] | None = None, standardize_target: bool = False,
) -> Dataset:
    """Split, optionally standardise, and convert a task's numpy arrays to a validated Dataset.

    X: (N, d) or (N, T, F); y: (N,) int labels or (N, k) float targets. Inputs are standardised
    per feature with training statistics when `standardize`; regression targets too when
    `standardize_target` (and `standardize`).
    """
    if standardize and X.ndim > 2:
        raise GdlabError(f"task '{spec.name}' holds sequences, which are never standardised; "
                         f"leave standardize unset or set it to false")
    classification = spec.task_type == "classification"
    X_train, X_test, y_train, y_test = split_train_test(X, y, test_fraction=test_fraction, seed=seed,
                                                        stratify=classification)
    if standardize:
        X_train, X_test, _, _ = standardize_splits(X_train, X_test)
        if standardize_target and not classification:
            y_train, y_test, _, _ = standardize_splits(y_train, y_test)
    return arrays_to_dataset(spec.name, X_train, y_train, X_test, y_test, task_type=spec.task_type,
                             num_classes=int(y.max()) + 1 if classification else None, dtype=dtype,
                             image_shape=image_shape, description=spec.description)


def _generated(make: Callable[..., tuple[np.ndarray, np.ndarray]],
               image_shape: tuple[int, ...] | None = None) -> Callable[..., Dataset]:
    """A loader for a data set generated with `make(n, seed=seed)`; any n_samples >= 2 is allowed."""

    def load(spec: TaskSpec, *, seed: int, n_samples: int | None, **options) -> Dataset:
        X, y = make(n_samples or spec.default_n_samples, seed=seed)
        return _to_dataset(spec, X, y, seed=seed, image_shape=image_shape, **options)

    return load


def _fixed(source: str, image_shape: tuple[int, ...] | None = None,
           standardize_target: bool = False) -> Callable[..., Dataset]:
    """A loader for a fixed real data set; n_samples subsamples it, stratified by class."""

    def load(spec: TaskSpec, *, seed: int, n_samples: int | None, **options) -> Dataset:
        X, y = bundled.load_sklearn(source)
        if n_samples is not None:
            if n_samples > len(X):
                raise GdlabError(f"n_samples={n_samples} is more than the {len(X)} samples of '{spec.name}'; "
                                 f"give n_samples between 2 and {len(X)}, or leave it unset for all of them")
            X, y = subsample(X, y, n_samples, seed=seed, stratify=spec.task_type == "classification")
        return _to_dataset(spec, X, y, seed=seed, image_shape=image_shape,
                           standardize_target=standardize_target, **options)

    return load


def _task(
    name: str, task_type: str, default_model: str, loader: Callable[..., Dataset], description: str,
    default_n_samples: int | None = None, standardize: bool = True,
) -> TaskSpec:
    """A TaskSpec whose default loss follows its task type: mse for regression, else cross_entropy."""
    return TaskSpec(name=name, description=description, task_type=task_type, default_model=default_model,
                    default_loss="mse" if task_type == "regression" else "cross_entropy",
                    default_n_samples=default_n_samples, standardize=standardize, loader=loader)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _task("linreg", "regression", "linear", _generated(synthetic.make_linreg),
              "y = 3x + 2 + N(0, 1) noise with x ~ U(0, 2), 1 feature (synthetic regression)",
              default_n_samples=100, standardize=False),
        _task("logistic", "classification", "logistic", _generated(synthetic.make_blobs2d),
              "two overlapping Gaussian blobs in 2-D, 2 classes (synthetic)", default_n_samples=400),
        _task("spirals", "classification", "mlp:2-64-64-2:tanh", _generated(synthetic.make_spirals),
              "two interleaved spirals in 2-D, 2 classes (synthetic, needs a nonlinear model)",
              default_n_samples=600),
        _task("adding", "regression", "lstm:32x1", _generated(synthetic.make_adding),
              "adding problem: sum the 2 marked values of a length-30 sequence (synthetic)",
              default_n_samples=1000, standardize=False),
        _task("sine", "regression", "gru:32x1", _generated(synthetic.make_sine),
              "forecast the next value of a sine wave from 20 noisy values (synthetic)",
              default_n_samples=1000, standardize=False),
        _task("digits", "classification", "mlp:64-128-10:relu", _fixed("digits", image_shape=(1, 8, 8)),
              "8x8 handwritten digits, 1797 samples, 64 features, 10 classes (scikit-learn)"),
        _task("iris", "classification", "logistic", _fixed("iris"),
              "iris flowers, 150 samples, 4 features, 3 classes (scikit-learn)"),
        _task("wine", "classification", "logistic", _fixed("wine"),
              "wine cultivars, 178 samples, 13 features, 3 classes (scikit-learn)"),
        _task("breast_cancer", "classification", "logistic", _fixed("breast_cancer"),
              "breast cancer diagnosis, 569 samples, 30 features, 2 classes (scikit-learn)"),
        _task("diabetes", "regression", "linear", _fixed("diabetes", standardize_target=True),
              "diabetes progression, 442 samples, 10 features, standardised target (scikit-learn)"),
        _task("mnist1d", "classification", "mlp:40-128-10:relu",
              _generated(bundled.make_mnist1d, image_shape=(1, bundled.MNIST1D_LENGTH)),
              "MNIST-1D signals generated locally, 40 features, 10 classes", default_n_samples=4000),
    )
}


def list_tasks() -> list[TaskSpec]:
    """All registered tasks, synthetic ones first, in registration order."""
    return list(TASKS.values())


def _check_arguments(seed: int, n_samples: int | None, test_fraction: float, standardize: bool | None,
                     dtype: torch.dtype) -> None:
    check_seed(seed)
    if n_samples is not None and (not is_integer(n_samples) or n_samples < 2):
        raise GdlabError(f"n_samples must be an integer >= 2 (or unset for the task's default), "
                         f"got {n_samples!r}")
    check_test_fraction(test_fraction)
    if standardize is not None and not isinstance(standardize, bool):
        raise GdlabError(f"standardize must be true, false or unset, got {standardize!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GdlabError(f"dtype must be a floating-point torch dtype such as torch.float32, got {dtype!r}")


def load_task(
    name: str, *, seed: int = 0, n_samples: int | None = None, test_fraction: float = 0.2,
    standardize: bool | None = None, dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load the task `name` as a Dataset, split into train and test.

    seed: drives generation, subsampling and the split; the same (name, seed, n_samples,
    test_fraction, standardize, dtype) gives bit-identical tensors. n_samples: total samples
    before the split (the task's default when None; for a fixed real data set, a deterministic
    stratified subsample of at most its size). test_fraction: share of samples held out,
    0 <= f < 1, rounded up; the split is stratified by class for classification.
    standardize: standardise inputs per feature with training-split statistics (the task's
    default when None; sequence tasks are never standardised). For `diabetes` the regression
    target is standardised too, with training statistics, so losses and learning rates are on
    a unit scale; synthetic regression targets are never standardised.
    X is `dtype`: (N, d) for tabular tasks, (N, T, F) for sequence tasks. y is int64 (N,) labels
    for classification and `dtype` (N, k) targets for regression. The tensors are fresh copies
    from a per-process cache of the last few loads (a study loads each task for every run).
    """
    if not isinstance(name, str) or name not in TASKS:
        raise unknown_name("task", name, TASKS)
    _check_arguments(seed, n_samples, test_fraction, standardize, dtype)
    spec = TASKS[name]
    data = _built(name, int(seed), None if n_samples is None else int(n_samples), float(test_fraction),
                  spec.standardize if standardize is None else bool(standardize), dtype)
    # a copy: the caller may change its tensors without changing the next load
    return replace(data, X_train=data.X_train.clone(), y_train=data.y_train.clone(), X_test=data.X_test.clone(),
                   y_test=data.y_test.clone())


# A study runs every (task, optimizer) pair about ten times on the same data, and generating
# MNIST-1D's 1000 rows alone takes 0.4 s: the last few loads are kept.
@functools.lru_cache(maxsize=8)
def _built(name: str, seed: int, n_samples: int | None, test_fraction: float, standardize: bool,
           dtype: torch.dtype) -> Dataset:
    spec = TASKS[name]
    return spec.loader(spec, seed=seed, n_samples=n_samples, test_fraction=test_fraction, standardize=standardize,
                       dtype=dtype)


def clear_task_cache() -> None:
    """Forget the tasks loaded in this process (the next :func:`load_task` builds them again)."""
    _built.cache_clear()


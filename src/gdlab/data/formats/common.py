"""What the format readers share: argument and file checks, target handling, the split of checked
arrays into a Dataset, and the block-wise scans that keep large or memory-mapped inputs from
being copied whole. Below every format module, so that no format needs another."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import TASK_TYPES, Dataset, validate_dataset
from gdlab.data.split import (
    arrays_to_dataset, check_seed, check_test_fraction, is_integer, split_train_test,
    standardize as standardize_splits, subsample
)
from gdlab.errors import GdlabError, unknown_name

# The .npy signature: the .npy reader requires it and the .npz reader refuses a file that has it.
NPY_MAGIC = b"\x93NUMPY"
# Scans and standardisation run over blocks of about this many values, so that a large or
# memory-mapped X never gets a full-size temporary beside it.
_BLOCK_VALUES = 1 << 22


def one_line(error: BaseException) -> str:
    """An exception's message on one line, for the parenthesis of a GdlabError."""
    return " ".join(str(error).split()) or type(error).__name__


def read_file(path: Path, fix: str = "check the path", directory_fix: str = "", size: int = -1) -> bytes:
    """The bytes of the file at `path`, or only its first `size` (a signature, read before a
    parser that would allocate what a corrupt header declares).

    Absent, a directory or unreadable: a GdlabError ending in `fix`; `directory_fix` replaces
    the directory message's default ", not a data file; <fix>".
    """
    if not path.exists():
        raise GdlabError(f"data file '{path}' does not exist; {fix}")
    if path.is_dir():
        raise GdlabError(f"'{path}' is a directory{directory_fix or ', not a data file; ' + fix}")
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as error:
        verb = "read" if size < 0 else "open"
        raise GdlabError(f"cannot {verb} '{path}' ({one_line(error)}); check its permissions") from None


def check_flag(name: str, value: object) -> None:
    """Raise GdlabError unless `value` is a bool (1 or "yes" would otherwise pass as true)."""
    if not isinstance(value, bool):
        raise GdlabError(f"{name} must be true or false, got {value!r}")


def check_task_type(task_type: str | None) -> None:
    """Raise GdlabError unless `task_type` is None (inferred) or one of TASK_TYPES."""
    if task_type is not None and task_type not in TASK_TYPES:
        raise unknown_name("task type", task_type, TASK_TYPES)


def check_split_options(task_type: str | None, seed: int, test_fraction: float, standardize: bool) -> None:
    """The checks of every reader that may split its samples, before any file is read."""
    check_task_type(task_type)
    check_seed(seed)
    check_test_fraction(test_fraction)
    check_flag("standardize", standardize)


def check_image_options(seed: int, n_samples: int | None, standardize: bool) -> None:
    """The checks of the image-set readers (MNIST, CIFAR-10), before any file is read."""
    check_flag("standardize", standardize)
    check_seed(seed)
    if n_samples is not None and (not is_integer(n_samples) or n_samples < 2):
        raise GdlabError(f"n_samples must be an integer >= 2 (or unset for every sample), got {n_samples!r}")


def check_shapes(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Raise GdlabError unless arrays X, y (and X_test, y_test when present) read from `path`
    are real numbers of matching shapes: X (N, features, ...) with N >= 1, y (N,) or (N, k)."""
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise GdlabError(f"array '{key}' in '{path}' has dtype {a.dtype}; gdlab needs real numbers "
                             f"(integer, boolean or floating point)")
    for suffix in ("", "_test"):
        X, y = arrays.get("X" + suffix), arrays.get("y" + suffix)
        if X is None:
            continue
        if X.ndim < 2:
            raise GdlabError(f"array 'X{suffix}' in '{path}' has shape {X.shape} but must be (N, features, ...); "
                             f"for a single feature save X.reshape(-1, 1)")
        if y.ndim not in (1, 2):
            raise GdlabError(f"array 'y{suffix}' in '{path}' has shape {y.shape} but must be (N,) or (N, outputs)")
        if X.shape[0] != y.shape[0]:
            raise GdlabError(f"'{path}': X{suffix} has {X.shape[0]} rows but y{suffix} has {y.shape[0]}; "
                             f"give one target per row of X{suffix}")
    if "X_test" in arrays and arrays["X_test"].shape[1:] != arrays["X"].shape[1:]:
        raise GdlabError(f"'{path}': X_test samples have shape {arrays['X_test'].shape[1:]} but X samples have "
                         f"{arrays['X'].shape[1:]}; give both splits the same features")
    if arrays["X"].shape[0] == 0:
        raise GdlabError(f"'{path}': X has no rows; give at least one sample")


def infer_task_type(y: np.ndarray) -> str:
    """Floating targets mean regression; integer or boolean ones, classification."""
    return "regression" if y.dtype.kind == "f" else "classification"


def targets(y: np.ndarray, task_type: str, key: str, path: Path) -> np.ndarray:
    """y as int64 (N,) labels for classification, float64 (N, k) targets for regression."""
    if task_type == "regression":
        y = y.astype(np.float64)
        return y.reshape(-1, 1) if y.ndim == 1 else y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise GdlabError(f"array '{key}' in '{path}' has shape {y.shape}; classification needs (N,) integer labels")
    if y.dtype.kind == "f" and not bool(np.all(np.isfinite(y) & (y == np.round(y)))):
        raise GdlabError(f"array '{key}' in '{path}' holds non-integer values but task_type is 'classification'; "
                         f"save integer labels 0..K-1 or use task_type='regression'")
    return y.astype(np.int64)


def arrays_to_split_dataset(
    arrays: dict[str, np.ndarray], path: Path, *, name: str, task_type: str | None, seed: int,
    test_fraction: float, standardize: bool, description: str, dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Turn checked in-memory arrays X, y (and optionally X_test, y_test) into a Dataset: infer
    the task type from y's dtype when None, split, standardise, validate (see npz.load_npz)."""
    if task_type is None:
        task_type = infer_task_type(arrays["y"])
    X = arrays["X"].astype(np.float64)
    y = targets(arrays["y"], task_type, "y", path)
    if "X_test" in arrays:
        X_test = arrays["X_test"].astype(np.float64)
        y_test = targets(arrays["y_test"], task_type, "y_test", path)
    else:
        X_test, y_test = X[:0], y[:0]
    classification = task_type == "classification"
    num_classes = int(max(y.max(), y_test.max(initial=0))) + 1 if classification else None
    # Validate the raw arrays first so that a NaN is reported at its row in the file, before
    # the split reorders rows and standardisation spreads it over a whole column.
    arrays_to_dataset(name, X, y, X_test, y_test, task_type=task_type, num_classes=num_classes, dtype=torch.float64)
    if "X_test" not in arrays:
        X, X_test, y, y_test = split_train_test(X, y, test_fraction=test_fraction, seed=seed, stratify=classification)
    if standardize:
        X, X_test, _, _ = standardize_splits(X, X_test)
    return arrays_to_dataset(name, X, y, X_test, y_test, task_type=task_type, num_classes=num_classes,
                             description=description, dtype=dtype)


def first_nonfinite_row(X: torch.Tensor) -> int | None:
    """Index of the first row of X (N, ...) holding NaN or Inf, scanning blocks of rows."""
    step = max(1, _BLOCK_VALUES // max(1, math.prod(X.shape[1:])))
    for start in range(0, X.shape[0], step):
        finite = torch.isfinite(X[start : start + step]).flatten(1).all(dim=1)
        if not bool(finite.all()):
            return start + int((~finite).nonzero()[0, 0])
    return None


def validate_in_blocks(ds: Dataset, scan: bool = True) -> None:
    """validate_dataset, with the NaN/Inf scan of the inputs run over blocks of rows (or left out when the caller
    has scanned them) so that a large or memory-mapped X is never turned into one full-size temporary."""
    for split, X in (("train", ds.X_train), ("test", ds.X_test)):
        row = first_nonfinite_row(X) if scan else None
        if row is not None:
            raise GdlabError(f"data set '{ds.name}': {split} inputs contain NaN or Inf (first at row {row}); "
                             f"remove or impute them before training")
    # Every other check of validate_dataset concerns shapes, dtypes and labels: run it on
    # zero-width views of the inputs, which keep N and the dtype but hold no values to scan.
    validate_dataset(replace(ds, X_train=ds.X_train.narrow(1, 0, 0), X_test=ds.X_test.narrow(1, 0, 0)))


def standardize_in_place(X_train: torch.Tensor, X_test: torch.Tensor) -> None:
    """Standardise both splits in place with the training split's per-feature mean and (population) standard
    deviation, accumulated in float64 over blocks of rows. A feature that is constant on the training split maps
    to 0, as in gdlab.data.split.fit_standardization."""
    n = X_train.shape[0]
    if n == 0:
        return  # nothing to fit; validation reports the empty training split
    step = max(1, _BLOCK_VALUES // max(1, math.prod(X_train.shape[1:])))
    blocks = range(0, n, step)
    total = torch.zeros(X_train.shape[1:], dtype=torch.float64)
    high = torch.full_like(total, -math.inf)
    low = torch.full_like(total, math.inf)
    for start in blocks:
        block = X_train[start : start + step].to(torch.float64)
        total += block.sum(dim=0)
        high = torch.maximum(high, block.amax(dim=0))
        low = torch.minimum(low, block.amin(dim=0))
    mean = total / n
    squares = torch.zeros_like(total)
    for start in blocks:
        squares += ((X_train[start : start + step].to(torch.float64) - mean) ** 2).sum(dim=0)
    std = (squares / n).sqrt()
    constant = high == low
    mean = torch.where(constant, X_train[0].to(torch.float64), mean)
    std = torch.where(constant, torch.ones_like(std), std)
    for X in (X_train, X_test):
        for start in range(0, X.shape[0], step):
            block = X[start : start + step]
            block.copy_((block.to(torch.float64) - mean) / std)


def subsample_indices(labels: np.ndarray, n_samples: int | None, seed: int, what: str) -> np.ndarray:
    """Indices of a deterministic, stratified subsample of n_samples of the training samples."""
    index = np.arange(len(labels))
    if n_samples is None:
        return index
    if n_samples > len(labels):
        raise GdlabError(f"n_samples={n_samples} is more than the {len(labels)} training samples of {what}; "
                         f"give n_samples between 2 and {len(labels)}, or leave it unset for all of them")
    return subsample(index, labels, n_samples, seed=seed, stratify=True)[0]


def _unit_floats(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N, ...) -> float32 tensor in [0, 1], without a float64 temporary."""
    if not (pixels.flags.writeable and pixels.flags.c_contiguous):
        pixels = np.array(pixels)  # torch.from_numpy warns on read-only arrays
    return torch.from_numpy(pixels).to(torch.float32).div_(255.0)


def image_dataset(
    name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
    image_shape: tuple[int, ...], standardize: bool, description: str,
) -> Dataset:
    """A validated 10-class Dataset from (uint8 pixels (N, P), uint8 labels (N,)) per split:
    pixels scaled to [0, 1], or standardised with training statistics."""
    X_train, X_test = _unit_floats(train[0]), _unit_floats(test[0])
    if standardize:
        standardize_in_place(X_train, X_test)
    ds = Dataset(name=name, X_train=X_train, y_train=torch.from_numpy(train[1].astype(np.int64)),
                 X_test=X_test, y_test=torch.from_numpy(test[1].astype(np.int64)),
                 task_type="classification", num_classes=10, image_shape=image_shape, description=description)
    validate_in_blocks(ds)
    return ds

"""Readers for local data files."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import TASK_TYPES, Dataset
from gdlab.data.split import (
    arrays_to_dataset,
    check_seed,
    check_test_fraction,
    split_train_test,
    standardize as standardize_splits,
)
from gdlab.errors import GdlabError, unknown_name

_SAVE_HINT = "save it with numpy.savez(path, X=X, y=y)"
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
# Checked before numpy.load, which would otherwise treat any other file as a pickle and fail with
# a message about allow_pickle.
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise GdlabError(
                f"array '{key}' in '{path}' holds Python objects, which gdlab does not unpickle; "
                f"save numeric arrays (e.g. numpy.asarray({key}, dtype=float))"
            ) from None
        raise GdlabError(
            f"cannot read array '{key}' from '{path}' ({_one_line(error)}); {_SAVE_HINT}"
        ) from None
    except _READ_ERRORS as error:
        raise GdlabError(
            f"cannot read array '{key}' from '{path}', the file looks corrupted "
            f"({_one_line(error)}); {_SAVE_HINT}"
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read X, y and, when present, X_test and y_test from the archive at `path`."""
    if not path.exists():
        raise GdlabError(f"data file '{path}' does not exist; check the path")
    if path.is_dir():
        raise GdlabError(f"'{path}' is a directory; give the path of an .npz file")
    try:
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError as error:
        raise GdlabError(f"cannot open '{path}' ({_one_line(error)}); check its permissions") from None
    if not magic.startswith((_ZIP_MAGIC, _NPY_MAGIC)):
        raise GdlabError(
            f"cannot read '{path}': it is not an .npz archive (no zip signature); {_SAVE_HINT}"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        raise GdlabError(
            f"cannot read '{path}' as an .npz archive, the file looks truncated or corrupted "
            f"({_one_line(error)}); {_SAVE_HINT}"
        ) from None
    if not hasattr(archive, "files"):
        raise GdlabError(f"'{path}' holds a single .npy array, not an .npz archive; {_SAVE_HINT}")
    with archive:
        keys = list(archive.files)
        for key in ("X", "y"):
            if key not in keys:
                raise GdlabError(
                    f"'{path}' has no array '{key}' (it holds: {', '.join(keys) or 'nothing'}); "
                    f"{_SAVE_HINT}"
                )
        if ("X_test" in keys) != ("y_test" in keys):
            raise GdlabError(
                f"'{path}' has only one of 'X_test' and 'y_test'; save both or neither"
            )
        wanted = [k for k in ("X", "y", "X_test", "y_test") if k in keys]
        return {key: _read_array(archive, key, path) for key in wanted}


def _check_shapes(arrays: dict[str, np.ndarray], path: Path) -> None:
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise GdlabError(
                f"array '{key}' in '{path}' has dtype {a.dtype}; gdlab needs real numbers "
                f"(integer, boolean or floating point)"
            )
    for suffix in ("", "_test"):
        X, y = arrays.get("X" + suffix), arrays.get("y" + suffix)
        if X is None:
            continue
        if X.ndim < 2:
            raise GdlabError(
                f"array 'X{suffix}' in '{path}' has shape {X.shape} but must be (N, features, ...); "
                f"for a single feature save X.reshape(-1, 1)"
            )
        if y.ndim not in (1, 2):
            raise GdlabError(
                f"array 'y{suffix}' in '{path}' has shape {y.shape} but must be (N,) or (N, outputs)"
            )
        if X.shape[0] != y.shape[0]:
            raise GdlabError(
                f"'{path}': X{suffix} has {X.shape[0]} rows but y{suffix} has {y.shape[0]}; "
                f"give one target per row of X{suffix}"
            )
    if "X_test" in arrays and arrays["X_test"].shape[1:] != arrays["X"].shape[1:]:
        raise GdlabError(
            f"'{path}': X_test samples have shape {arrays['X_test'].shape[1:]} but X samples have "
            f"{arrays['X'].shape[1:]}; give both splits the same features"
        )
    if arrays["X"].shape[0] == 0:
        raise GdlabError(f"'{path}': X has no rows; give at least one sample")


def _targets(y: np.ndarray, task_type: str, key: str, path: Path) -> np.ndarray:
    """y as int64 (N,) labels for classification, float64 (N, k) targets for regression."""
    if task_type == "regression":
        y = y.astype(np.float64)
        return y.reshape(-1, 1) if y.ndim == 1 else y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise GdlabError(
            f"array '{key}' in '{path}' has shape {y.shape}; classification needs (N,) integer labels"
        )
    if y.dtype.kind == "f" and not bool(np.all(np.isfinite(y) & (y == np.round(y)))):
        raise GdlabError(
            f"array '{key}' in '{path}' holds non-integer values but task_type is 'classification'; "
            f"save integer labels 0..K-1 or use task_type='regression'"
        )
    return y.astype(np.int64)


def load_npz(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    task_type: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> Dataset:
    """Load a data set from a NumPy .npz archive with arrays `X` and `y`, and optionally
    `X_test` and `y_test`.

    X: (N, features, ...) of real numbers; y: (N,) or (N, k). When task_type is None it is
    inferred: integer or boolean y means classification (num_classes = max label + 1), floating
    y means regression (a 1-D y becomes (N, 1)). Without X_test/y_test the file's samples are
    split with `test_fraction` and `seed` (stratified for classification); with them the file's
    split is used and test_fraction is ignored. `standardize` standardises every input feature
    (every position of X[i]) with training statistics; targets are left as they are. Tensors are
    float32 (labels int64); the name defaults to the file's stem. Nothing is unpickled. Every
    problem with the file or its contents raises GdlabError.
    """
    path = Path(path)
    if task_type is not None and task_type not in TASK_TYPES:
        raise unknown_name("task type", task_type, TASK_TYPES)
    check_seed(seed)
    check_test_fraction(test_fraction)
    if not isinstance(standardize, bool):
        raise GdlabError(f"standardize must be true or false, got {standardize!r}")
    arrays = _read_npz(path)
    _check_shapes(arrays, path)
    if task_type is None:
        task_type = "regression" if arrays["y"].dtype.kind == "f" else "classification"
    name = name or path.stem
    X = arrays["X"].astype(np.float64)
    y = _targets(arrays["y"], task_type, "y", path)
    if "X_test" in arrays:
        X_test = arrays["X_test"].astype(np.float64)
        y_test = _targets(arrays["y_test"], task_type, "y_test", path)
    else:
        X_test, y_test = X[:0], y[:0]
    num_classes = None
    if task_type == "classification":
        num_classes = int(max(y.max(), y_test.max(initial=0))) + 1

    # Validate the raw arrays first so that a NaN is reported at its row in the file, before
    # the split reorders rows and standardisation spreads it over a whole column.
    arrays_to_dataset(
        name, X, y, X_test, y_test, task_type=task_type, num_classes=num_classes, dtype=torch.float64
    )
    if "X_test" not in arrays:
        X, X_test, y, y_test = split_train_test(
            X, y, test_fraction=test_fraction, seed=seed, stratify=task_type == "classification"
        )
    if standardize:
        X, X_test, _, _ = standardize_splits(X, X_test)
    return arrays_to_dataset(
        name,
        X,
        y,
        X_test,
        y_test,
        task_type=task_type,
        num_classes=num_classes,
        description=f"loaded from {path}",
    )

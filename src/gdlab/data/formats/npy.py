"""Pairs of NumPy .npy files (X.npy and y.npy, optionally X_test.npy and y_test.npy), read into
memory or memory-mapped so that X may be larger than RAM; never unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import Dataset
from gdlab.data.formats.common import (
    NPY_MAGIC, arrays_to_split_dataset, check_flag, check_shapes, check_split_options,
    first_nonfinite_row, infer_task_type, one_line, read_file, targets, validate_in_blocks
)
from gdlab.data.split import split_sizes
from gdlab.errors import GdlabError

_NPY_SAVE_HINT = "save the arrays with numpy.save('X.npy', X) and numpy.save('y.npy', y)"


def _npy_paths(source: Path) -> tuple[dict[str, Path], Path]:
    """The X, y, X_test, y_test .npy paths for a directory, a path ending in X.npy, or a prefix;
    and the path that names the pair in messages."""
    if source.is_dir():
        return {key: source / f"{key}.npy" for key in ("X", "y", "X_test", "y_test")}, source
    text = str(source)
    if text.endswith(".npy"):
        if not text.endswith("X.npy"):
            raise GdlabError(
                f"'{source}' is not the X.npy file of a pair; give the directory holding X.npy and "
                f"y.npy, the path of X.npy (prefix + 'X.npy'), or the prefix"
            )
        text = text[: -len("X.npy")]
    return {key: Path(f"{text}{key}.npy") for key in ("X", "y", "X_test", "y_test")}, Path(text or ".")


def _load_npy(path: Path, key: str, mmap: bool) -> np.ndarray:
    """One .npy array: memory-mapped copy-on-write with `mmap`, else read into memory."""
    hint = f"save it with numpy.save('{path.name}', {key})"
    magic = read_file(path, hint, f", not a .npy file; {hint}", size=len(NPY_MAGIC))
    if not magic.startswith(NPY_MAGIC):
        raise GdlabError(f"'{path}' is not a .npy file (no NUMPY signature); {hint}")
    try:
        # Mapping first reads only the header and fails cleanly when the data is shorter than
        # the header declares, instead of allocating the declared size up front.
        array = np.load(path, mmap_mode="c" if mmap else "r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, OverflowError) as error:
        text = str(error)
        if isinstance(error, ValueError) and ("object" in text.lower() or "pickle" in text):
            raise GdlabError(
                f"'{path}' holds Python objects, which gdlab does not unpickle; save a numeric "
                f"array (e.g. numpy.asarray({key}, dtype=float))"
            ) from None
        raise GdlabError(
            f"cannot read '{path}', the file looks truncated or corrupted ({one_line(error)}); {hint}"
        ) from None
    if mmap:
        return array
    try:
        return np.array(array)
    except MemoryError:
        raise GdlabError(
            f"'{path}' ({array.nbytes} bytes) does not fit in memory; load it memory-mapped"
        ) from None


def _mapped_inputs(X: np.ndarray, path: Path) -> torch.Tensor:
    """A tensor sharing the memory-mapped array X (no copy)."""
    if X.dtype.kind != "f" or X.dtype.itemsize not in (4, 8) or not X.dtype.isnative:
        raise GdlabError(
            f"'{path}' holds {X.dtype} values, but a memory-mapped X must be float32 or float64 in "
            f"native byte order to be used without a copy; save X.astype('float32') or load "
            f"without mmap"
        )
    if not X.flags.c_contiguous:
        raise GdlabError(
            f"'{path}' is stored in Fortran order, which memory-mapped rows cannot be read from "
            f"efficiently; save numpy.ascontiguousarray(X) or load without mmap"
        )
    return torch.from_numpy(X)


def load_npy_pair(
    directory_or_prefix: str | os.PathLike, *, mmap: bool = False, name: str | None = None,
    task_type: str | None = None, seed: int = 0, test_fraction: float = 0.2, standardize: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load X.npy and y.npy (and, when both exist, X_test.npy and y_test.npy).

    directory_or_prefix: a directory holding the files, the path of X.npy itself, or a prefix
    P naming P + 'X.npy', P + 'y.npy', ... (e.g. 'data/mnist_'). Arrays and type inference are
    as in npz.load_npz; nothing is unpickled. Without mmap the arrays are read into memory, split
    (seed, test_fraction, stratified) and standardised (standardize None means true), exactly
    as load_npz would. With `mmap` X (and X_test) stay memory-mapped copy-on-write and the
    tensors share that memory, so X may be larger than RAM: X must then be float32 or float64
    and C-ordered, keeps its dtype, is never standardised (standardize must be None or false),
    and without X_test.npy the test split is the last ceil(test_fraction * N) rows (no shuffle).
    The NaN/Inf check then reads X in blocks of rows. y is always read into memory.
    """
    check_flag("mmap", mmap)
    check_split_options(task_type, seed, test_fraction, standardize is None or standardize)
    if mmap and standardize:
        raise GdlabError(
            "standardize is not possible with mmap (it would copy X into memory); standardise X "
            "before saving X.npy, or load it without mmap"
        )
    paths, where = _npy_paths(Path(directory_or_prefix))
    for key in ("X", "y"):
        if not paths[key].is_file():
            raise GdlabError(
                f"'{paths[key]}' is missing: a .npy pair needs {paths['X'].name} and "
                f"{paths['y'].name} side by side; {_NPY_SAVE_HINT}"
            )
    has_test = paths["X_test"].is_file(), paths["y_test"].is_file()
    if has_test[0] != has_test[1]:
        raise GdlabError(
            f"only one of '{paths['X_test']}' and '{paths['y_test']}' exists; save both or neither"
        )
    keys = ("X", "y", "X_test", "y_test") if has_test[0] else ("X", "y")
    arrays = {key: _load_npy(paths[key], key, mmap and key.startswith("X")) for key in keys}
    check_shapes(arrays, where)
    name = name or (where.name if where.is_dir() else where.name.rstrip("_-.")) or "npy"
    description = f"loaded from {paths['X']}"
    if not mmap:
        return arrays_to_split_dataset(
            arrays, where, name=name, task_type=task_type, seed=seed, test_fraction=test_fraction,
            standardize=True if standardize is None else standardize, description=description, dtype=dtype
        )
    for key in (k for k in ("X", "X_test") if k in arrays):
        row = first_nonfinite_row(_mapped_inputs(arrays[key], paths[key]))
        if row is not None:
            raise GdlabError(
                f"'{paths[key]}' holds NaN or Inf in row {row}; remove or impute those rows "
                f"before training"
            )
    if task_type is None:
        task_type = infer_task_type(arrays["y"])
    X = arrays["X"]
    y = targets(arrays["y"], task_type, "y", where)
    if has_test[0]:
        X_test, y_test = arrays["X_test"], targets(arrays["y_test"], task_type, "y_test", where)
        if X_test.dtype != X.dtype:
            raise GdlabError(
                f"'{paths['X_test']}' holds {X_test.dtype} but '{paths['X']}' holds {X.dtype}; "
                f"save both with one dtype to memory-map them"
            )
    else:
        n_train, _ = split_sizes(len(X), test_fraction)
        X, X_test, y, y_test = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
    X_train_t = _mapped_inputs(X, paths["X"])
    X_test_t = _mapped_inputs(X_test, paths["X_test" if has_test[0] else "X"])
    classification = task_type == "classification"
    num_classes = int(max(y.max(initial=0), y_test.max(initial=0))) + 1 if classification else None
    ds = Dataset(
        name=name, X_train=X_train_t, y_train=_target_tensor(y, task_type, X.dtype),
        X_test=X_test_t, y_test=_target_tensor(y_test, task_type, X.dtype), task_type=task_type,
        num_classes=num_classes, description=description + " (memory-mapped)"
    )
    # The inputs were scanned for NaN/Inf above, file by file, with rows numbered as in the file.
    validate_in_blocks(ds, scan=False)
    return ds


def _target_tensor(y: np.ndarray, task_type: str, dtype: np.dtype) -> torch.Tensor:
    if task_type == "classification":
        return torch.from_numpy(np.array(y, dtype=np.int64))
    return torch.from_numpy(np.array(y, dtype=dtype))

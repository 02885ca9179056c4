"""Readers for local data files."""

from __future__ import annotations

import os
import re
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
from gdlab.errors import GdlabError, did_you_mean, unknown_name

_SAVE_HINT = "save it with numpy.savez(path, X=X, y=y)"
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
# Checked before numpy.load, which would otherwise treat any other file as a pickle and fail with
# a message about allow_pickle.
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"
_IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")
_CIFAR_BATCH = re.compile(r"(data_batch_[1-5]|test_batch)\.bin")


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
    except MemoryError:
        raise GdlabError(
            f"array '{key}' in '{path}' does not fit in memory (or its header is corrupted); "
            f"use a smaller data set, or save X.npy and y.npy and load them memory-mapped"
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
    if magic.startswith(_NPY_MAGIC):
        # Refused before numpy.load, which would read (and allocate) the whole array first.
        raise GdlabError(
            f"'{path}' holds a single .npy array, not an .npz archive; {_SAVE_HINT}, or give the "
            f"directory holding X.npy and y.npy"
        )
    if not magic.startswith(_ZIP_MAGIC):
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
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a data set from a NumPy .npz archive with arrays `X` and `y`, and optionally
    `X_test` and `y_test`.

    X: (N, features, ...) of real numbers; y: (N,) or (N, k). When task_type is None it is
    inferred: integer or boolean y means classification (num_classes = max label + 1), floating
    y means regression (a 1-D y becomes (N, 1)). Without X_test/y_test the file's samples are
    split with `test_fraction` and `seed` (stratified for classification); with them the file's
    split is used and test_fraction is ignored. `standardize` standardises every input feature
    (every position of X[i]) with training statistics; targets are left as they are. Inputs and
    regression targets are `dtype` (default float32; split and standardised in float64 first),
    labels int64; the name defaults to the file's stem. Nothing is unpickled. Every
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
    return _arrays_to_split_dataset(
        arrays,
        path,
        name=name or path.stem,
        task_type=task_type,
        seed=seed,
        test_fraction=test_fraction,
        standardize=standardize,
        description=f"loaded from {path}",
        dtype=dtype,
    )


def _arrays_to_split_dataset(
    arrays: dict[str, np.ndarray],
    path: Path,
    *,
    name: str,
    task_type: str | None,
    seed: int,
    test_fraction: float,
    standardize: bool,
    description: str,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Turn checked in-memory arrays X, y (and optionally X_test, y_test) into a Dataset: infer
    the task type from y's dtype when None, split, standardise, validate (see load_npz)."""
    if task_type is None:
        task_type = "regression" if arrays["y"].dtype.kind == "f" else "classification"
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
        description=description,
        dtype=dtype,
    )


def _resolve(path: Path, data_dir: str | os.PathLike | None) -> Path:
    """`path`, or the same relative path under the data directory when only that exists."""
    from gdlab.data.readers import data_dir as find_data_dir

    if path.exists() or path.is_absolute():
        return path
    try:
        candidate = find_data_dir(data_dir) / path
    except GdlabError:
        return path
    return candidate if candidate.exists() else path


def _source_kind(path: Path, text: str, names: list[str]) -> tuple[str, Path]:
    """(format, path to read) for a data path: npz, npy, csv, tsv, mnist, fashion-mnist, cifar10."""
    from gdlab.data import readers

    lower = path.name.lower()
    fashion = "fashion" in str(path).lower()
    if path.is_dir():
        if (path / "X.npy").is_file():
            return "npy", path
        if readers.find_cifar10_files(path)[1] != list(readers.CIFAR10_FILES):
            return "cifar10", path
        if readers.find_mnist_files(path)[0]:
            return ("fashion-mnist" if fashion else "mnist"), path
        if readers.cifar10_python_version(path) or (path / "cifar-10-binary.tar.gz").is_file():
            return "cifar10", path  # its reader explains what to download or extract
        raise GdlabError(
            f"directory '{path}' holds no data gdlab can read; give a folder with X.npy and y.npy, "
            f"the four MNIST IDX files or the CIFAR-10 binary batches, or a .npz, .npy, .csv or "
            f".tsv file"
        )
    for suffix, kind in ((".npz", "npz"), (".npy", "npy"), (".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv")):
        if lower.endswith(suffix):
            return kind, path
    if lower.endswith(("-ubyte", "-ubyte.gz")):
        return ("fashion-mnist" if fashion else "mnist"), path.parent
    if _CIFAR_BATCH.fullmatch(lower):
        return "cifar10", path.parent
    if not path.exists():
        raise GdlabError(
            f"data '{text}' is neither an existing file nor a known name{did_you_mean(text, names)}; "
            f"give a path (.npz, .npy, .csv, .tsv or a directory) or one of: {', '.join(names)}"
        )
    raise GdlabError(
        f"cannot tell the format of '{path}' from its name; give a .npz, .npy, .csv or .tsv file, "
        f"a directory of MNIST IDX or CIFAR-10 binary files, or one of: {', '.join(names)}"
    )


def load_data_source(
    data: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool | None = None,
    task_type: str | None = None,
    n_samples: int | None = None,
    mmap: bool = False,
    label_column: str | int = -1,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load the data that `data` names (what `--data` accepts), dispatching on what it is.

    - A preset name (mnist-mlp, fashion-cnn, cifar10-resnet) or a local data set name (mnist,
      fashion-mnist, cifar10): read from the data directory (`data_dir`, else $GDLAB_DATA_DIR;
      see gdlab.data.presets for the folders searched). Names win over files of the same name.
    - A file, by its extension: .npz (load_npz); .npy (the X.npy of a pair, or a prefix:
      load_npy_pair); .csv, .tsv, .tab (load_csv, comma or tab separated); an IDX file
      (*-ubyte, *-ubyte.gz) or a CIFAR-10 batch (data_batch_N.bin, test_batch.bin): its folder.
    - A directory: with X.npy, a .npy pair; with CIFAR-10 binary batches (or
      cifar-10-batches-bin/), CIFAR-10; with MNIST IDX files, MNIST (Fashion-MNIST when the
      path mentions 'fashion').
    A relative path that does not exist is looked up under the data directory when one is set.

    standardize None means the format's default: true for .npz, .csv and in-memory .npy, false
    for memory-mapped .npy and image sets (pixels scaled to [0, 1]). test_fraction and seed
    split sources without a test split of their own. n_samples (a stratified training subsample)
    applies to image sets only, mmap to .npy only, label_column to CSV only. `dtype` is the
    dtype .npz, .csv and in-memory .npy inputs are converted to from float64 (image sets and
    memory-mapped arrays keep their own; the caller converts). Every problem raises GdlabError.
    """
    # Imported here: readers and presets import this module's helpers.
    from gdlab.data import presets, readers

    if not isinstance(data, (str, os.PathLike)) or not os.fspath(data):
        raise GdlabError(f"data must be a file, a directory or a preset name, got {data!r}")
    text = os.fspath(data)
    names = sorted([*presets.PRESETS, *presets.LOCAL_DATA_SETS])
    if text in presets.PRESETS:
        kind, path = presets.PRESETS[text].data_set, None
    elif text in presets.LOCAL_DATA_SETS:
        kind, path = text, None
    else:
        kind, path = _source_kind(_resolve(Path(text).expanduser(), data_dir), text, names)

    if mmap and kind != "npy":
        raise GdlabError(f"mmap applies to .npy data only, not to '{text}'; leave it off")
    if label_column != -1 and kind not in ("csv", "tsv"):
        raise GdlabError(f"label_column applies to CSV files only, not to '{text}'; leave it unset")
    if n_samples is not None and kind not in _IMAGE_SETS:
        raise GdlabError(
            f"n_samples applies to tasks and image data sets only, not to '{text}'; subsample the "
            f"file before loading it, or leave n_samples unset"
        )
    if kind in _IMAGE_SETS:
        if task_type not in (None, "classification"):
            raise GdlabError(
                f"'{text}' is a classification data set; leave task_type unset or 'classification'"
            )
        options = dict(seed=seed, n_samples=n_samples, standardize=bool(standardize))
        if path is None and text in presets.PRESETS:
            return presets.load_preset(text, data_dir, **options)
        if path is None:
            return presets.load_local_data_set(kind, data_dir, **options)
        if kind == "cifar10":
            return readers.load_cifar10_dir(path, name=name, **options)
        return readers.load_mnist_dir(path, fashion=kind == "fashion-mnist", name=name, **options)
    split = dict(name=name, task_type=task_type, seed=seed, test_fraction=test_fraction, dtype=dtype)
    if kind == "npy":
        return readers.load_npy_pair(path, mmap=mmap, standardize=standardize, **split)
    standardize = True if standardize is None else standardize
    if kind == "npz":
        return load_npz(path, standardize=standardize, **split)
    return readers.load_csv(
        path,
        label_column=label_column,
        delimiter="\t" if kind == "tsv" else ",",
        standardize=standardize,
        **split,
    )

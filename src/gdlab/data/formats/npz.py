"""NumPy .npz archives holding X and y (and optionally X_test and y_test), never unpickled."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import Dataset
from gdlab.data.formats.common import (
    NPY_MAGIC, arrays_to_split_dataset, check_shapes, check_split_options, one_line, read_file
)
from gdlab.errors import GdlabError

_SAVE_HINT = "save it with numpy.savez(path, X=X, y=y)"
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
# Checked before numpy.load, which would otherwise treat any other file as a pickle and fail with
# a message about allow_pickle.
_ZIP_MAGIC = b"PK"


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
            f"cannot read array '{key}' from '{path}' ({one_line(error)}); {_SAVE_HINT}"
        ) from None
    except MemoryError:
        raise GdlabError(
            f"array '{key}' in '{path}' does not fit in memory (or its header is corrupted); "
            f"use a smaller data set, or save X.npy and y.npy and load them memory-mapped"
        ) from None
    except _READ_ERRORS as error:
        raise GdlabError(
            f"cannot read array '{key}' from '{path}', the file looks corrupted "
            f"({one_line(error)}); {_SAVE_HINT}"
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read X, y and, when present, X_test and y_test from the archive at `path`."""
    magic = read_file(path, directory_fix="; give the path of an .npz file", size=len(NPY_MAGIC))
    if magic.startswith(NPY_MAGIC):
        # Refused before numpy.load, which would read (and allocate) the whole array first.
        raise GdlabError(
            f"'{path}' holds a single .npy array, not an .npz archive; {_SAVE_HINT}, or give the "
            f"directory holding X.npy and y.npy"
        )
    if not magic.startswith(_ZIP_MAGIC):
        raise GdlabError(f"cannot read '{path}': it is not an .npz archive (no zip signature); {_SAVE_HINT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        raise GdlabError(
            f"cannot read '{path}' as an .npz archive, the file looks truncated or corrupted "
            f"({one_line(error)}); {_SAVE_HINT}"
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
            raise GdlabError(f"'{path}' has only one of 'X_test' and 'y_test'; save both or neither")
        wanted = [k for k in ("X", "y", "X_test", "y_test") if k in keys]
        return {key: _read_array(archive, key, path) for key in wanted}


def load_npz(
    path: str | os.PathLike, *, name: str | None = None, task_type: str | None = None, seed: int = 0,
    test_fraction: float = 0.2, standardize: bool = True, dtype: torch.dtype = torch.float32,
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
    check_split_options(task_type, seed, test_fraction, standardize)
    arrays = _read_npz(path)
    check_shapes(arrays, path)
    return arrays_to_split_dataset(
        arrays, path, name=name or path.stem, task_type=task_type, seed=seed,
        test_fraction=test_fraction, standardize=standardize, description=f"loaded from {path}", dtype=dtype
    )

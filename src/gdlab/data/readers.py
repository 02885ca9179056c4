"""Readers for standard on-disk data formats: MNIST-style IDX files, the CIFAR-10 binary version,
CSV, pairs of NumPy .npy files (optionally memory-mapped), and any torch Dataset.

Every reader checks a file's signature before parsing it, never unpickles, writes nothing, and
reports every problem as a one-line GdlabError naming the file and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import numbers
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gdlab.data.dataset import TASK_TYPES, Dataset, validate_dataset
from gdlab.data.files import (
    _NPY_MAGIC,
    _arrays_to_split_dataset,
    _check_shapes,
    _one_line,
    _targets,
)
from gdlab.data.split import check_seed, check_test_fraction, split_sizes, split_train_test, subsample
from gdlab.errors import GdlabError, did_you_mean, unknown_name

DATA_DIR_ENV = "GDLAB_DATA_DIR"

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_SOURCE = "yann.lecun.com/exdb/mnist or one of its mirrors"
FASHION_MNIST_SOURCE = "github.com/zalandoresearch/fashion-mnist (folder data/fashion)"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
CIFAR10_SOURCE = "cifar-10-binary.tar.gz from www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_FIX = "download the file again (an MNIST-style IDX file, gzipped or not)"
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
_NPY_SAVE_HINT = "save the arrays with numpy.save('X.npy', X) and numpy.save('y.npy', y)"
# Scans and standardisation run over blocks of about this many values, so that a large or
# memory-mapped X never gets a full-size temporary beside it.
_BLOCK_VALUES = 1 << 22
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_LISTED = 100


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The directory that holds local data sets: `explicit` when given, else $GDLAB_DATA_DIR.

    The directory need not exist yet: the readers name the files missing from it. Raises
    GdlabError when neither is set.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    raise GdlabError(f"no data directory: pass --data-dir DIR or set {DATA_DIR_ENV}")


def _read_bytes(path: Path, fix: str = "check the path") -> bytes:
    if not path.exists():
        raise GdlabError(f"data file '{path}' does not exist; {fix}")
    if path.is_dir():
        raise GdlabError(f"'{path}' is a directory, not a data file; {fix}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise GdlabError(f"cannot read '{path}' ({_one_line(error)}); check its permissions") from None


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise GdlabError(f"{name} must be true or false, got {value!r}")


def _check_task_type(task_type: str | None) -> None:
    if task_type is not None and task_type not in TASK_TYPES:
        raise unknown_name("task type", task_type, TASK_TYPES)


def _check_n_samples(n_samples: int | None) -> None:
    if n_samples is not None and (
        not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or n_samples < 2
    ):
        raise GdlabError(
            f"n_samples must be an integer >= 2 (or unset for every sample), got {n_samples!r}"
        )


def _first_nonfinite_row(X: torch.Tensor) -> int | None:
    """Index of the first row of X (N, ...) holding NaN or Inf, scanning blocks of rows."""
    step = max(1, _BLOCK_VALUES // max(1, math.prod(X.shape[1:])))
    for start in range(0, X.shape[0], step):
        finite = torch.isfinite(X[start : start + step]).flatten(1).all(dim=1)
        if not bool(finite.all()):
            return start + int((~finite).nonzero()[0, 0])
    return None


def _validate_in_blocks(ds: Dataset, scan: bool = True) -> None:
    """validate_dataset, with the NaN/Inf scan of the inputs run over blocks of rows (or left
    out when the caller has scanned them) so that a large or memory-mapped X is never turned
    into one full-size temporary."""
    for split, X in (("train", ds.X_train), ("test", ds.X_test)):
        row = _first_nonfinite_row(X) if scan else None
        if row is not None:
            raise GdlabError(
                f"data set '{ds.name}': {split} inputs contain NaN or Inf (first at row {row}); "
                f"remove or impute them before training"
            )
    # Every other check of validate_dataset concerns shapes, dtypes and labels: run it on
    # zero-width views of the inputs, which keep N and the dtype but hold no values to scan.
    validate_dataset(
        replace(ds, X_train=ds.X_train.narrow(1, 0, 0), X_test=ds.X_test.narrow(1, 0, 0))
    )


def _standardize_in_place(X_train: torch.Tensor, X_test: torch.Tensor) -> None:
    """Standardise both splits in place with the training split's per-feature mean and
    (population) standard deviation, accumulated in float64 over blocks of rows. A feature that
    is constant on the training split maps to 0, as in gdlab.data.split.fit_standardization."""
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


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise GdlabError(
            f"'{path}' is a corrupt or truncated gzip file ({_one_line(error)}); {_IDX_FIX}"
        ) from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Gzip is detected by its magic bytes 1f 8b, not by the file name. The header is two zero
    bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then each dimension as a big-endian uint32; the
    values follow, big-endian. Returns an array of the declared shape in native byte order.
    Raises GdlabError for a bad signature, an unknown type code, and data shorter or longer
    than the header declares.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(raw, path)
    if len(raw) < 4:
        raise GdlabError(
            f"'{path}' is truncated: {len(raw)} bytes, shorter than the 4-byte IDX header; {_IDX_FIX}"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise GdlabError(
            f"'{path}' is not an IDX file: it starts with bytes {raw[:4].hex(' ')}, not 00 00; "
            f"give an MNIST-style IDX file, gzipped or not"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise GdlabError(
            f"'{path}' declares the unknown IDX data type 0x{code:02X} (known: 0x08, 0x09, 0x0B, "
            f"0x0C, 0x0D, 0x0E); the file is corrupt or not IDX: {_IDX_FIX}"
        )
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise GdlabError(
            f"'{path}' is truncated: its header declares {ndim} dimensions but the file ends "
            f"after {len(raw)} bytes; {_IDX_FIX}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected, present = count * dtype.itemsize, len(raw) - start
    if present < expected:
        raise GdlabError(
            f"'{path}' is truncated: its header declares shape {dims} of {dtype.name} "
            f"({expected} bytes) but {present} bytes follow; {_IDX_FIX}"
        )
    if present > expected:
        raise GdlabError(
            f"'{path}' has {present - expected} bytes after the {dims} {dtype.name} array its "
            f"header declares; the file is corrupt or not IDX: {_IDX_FIX}"
        )
    try:
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(dims)
    except ValueError:
        # An empty array whose other dimensions are huge: its shape overflows numpy's limits.
        raise GdlabError(
            f"'{path}' declares the impossible shape {dims}; the file is corrupt: {_IDX_FIX}"
        ) from None
    return array.astype(dtype.newbyteorder("="))


def find_mnist_files(directory: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Locate the four MNIST-style IDX files in `directory`.

    Each may be gzipped or not, and named as in MNIST_FILES or with a dot before 'idx' (as some
    mirrors name them, e.g. train-images.idx3-ubyte); the uncompressed file wins when both exist.
    Returns (found, missing): the files found, keyed by their name in MNIST_FILES, and the
    MNIST_FILES names not found.
    """
    directory = Path(directory)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in MNIST_FILES:
        stem = name.removesuffix(".gz")
        dotted = stem.replace("-idx", ".idx")
        for candidate in (stem, name, dotted, dotted + ".gz"):
            if (directory / candidate).is_file():
                found[name] = directory / candidate
                break
        else:
            missing.append(name)
    return found, missing


def _image_pair(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Check that an IDX image file and its label file belong together."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise GdlabError(
            f"'{image_path}' holds a {images.dtype} array of shape {images.shape}, not uint8 "
            f"images (N, rows, cols); is it the right file? {_IDX_FIX}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise GdlabError(
            f"'{label_path}' holds a {labels.dtype} array of shape {labels.shape}, not uint8 "
            f"labels (N,); is it the right file? {_IDX_FIX}"
        )
    if len(images) != len(labels):
        raise GdlabError(
            f"'{image_path}' holds {len(images)} images but '{label_path}' holds {len(labels)} "
            f"labels; the two files do not belong together: download both again"
        )
    if labels.size and int(labels.max()) > 9:
        raise GdlabError(
            f"'{label_path}' holds the label {int(labels.max())} but labels must be 0..9; "
            f"{_IDX_FIX}"
        )


def _subsample_indices(labels: np.ndarray, n_samples: int | None, seed: int, what: str) -> np.ndarray:
    """Indices of a deterministic, stratified subsample of n_samples of the training samples."""
    index = np.arange(len(labels))
    if n_samples is None:
        return index
    if n_samples > len(labels):
        raise GdlabError(
            f"n_samples={n_samples} is more than the {len(labels)} training samples of {what}; "
            f"give n_samples between 2 and {len(labels)}, or leave it unset for all of them"
        )
    index, _ = subsample(index, labels, n_samples, seed=seed, stratify=True)
    return index


def _unit_floats(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N, ...) -> float32 tensor in [0, 1], without a float64 temporary."""
    if not (pixels.flags.writeable and pixels.flags.c_contiguous):
        pixels = np.array(pixels)  # torch.from_numpy warns on read-only arrays
    return torch.from_numpy(pixels).to(torch.float32).div_(255.0)


def _image_dataset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    image_shape: tuple[int, ...],
    standardize: bool,
    description: str,
) -> Dataset:
    X_train, X_test = _unit_floats(train[0]), _unit_floats(test[0])
    if standardize:
        _standardize_in_place(X_train, X_test)
    ds = Dataset(
        name=name,
        X_train=X_train,
        y_train=torch.from_numpy(train[1].astype(np.int64)),
        X_test=X_test,
        y_test=torch.from_numpy(test[1].astype(np.int64)),
        task_type="classification",
        num_classes=10,
        image_shape=image_shape,
        description=description,
    )
    _validate_in_blocks(ds)
    return ds


def _mnist_missing_message(directory: Path, missing: list[str], fashion: bool) -> str:
    label, source = ("Fashion-MNIST", FASHION_MNIST_SOURCE) if fashion else ("MNIST", MNIST_SOURCE)
    absent = "" if directory.is_dir() else ", which does not exist"
    return (
        f"{label} files missing in '{directory}'{absent}: {', '.join(missing)} (gzipped or not); "
        f"place the four {label} IDX files there, from {source}"
    )


def load_mnist_dir(
    directory: str | os.PathLike,
    *,
    fashion: bool = False,
    seed: int = 0,
    n_samples: int | None = None,
    standardize: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load MNIST (or Fashion-MNIST with `fashion`) from its four IDX files in `directory`.

    The files are those of MNIST_FILES, gzipped or not (see find_mnist_files). The files'
    own train/test split is used: 60000 / 10000 samples for the originals. X: (N, rows*cols)
    float32 in [0, 1] (pixel / 255), image_shape (1, rows, cols); y: (N,) int64 labels 0..9.
    n_samples keeps a stratified subsample of that many training samples, chosen by `seed`
    (the test split is kept whole). `standardize` standardises every pixel with training
    statistics instead of the [0, 1] scaling. Raises GdlabError naming the missing files, or a
    file that is corrupt or does not match its partner.
    """
    directory = Path(directory)
    _check_flag("fashion", fashion)
    _check_flag("standardize", standardize)
    check_seed(seed)
    _check_n_samples(n_samples)
    found, missing = find_mnist_files(directory)
    if missing:
        raise GdlabError(_mnist_missing_message(directory, missing, fashion))
    train_images, train_labels, test_images, test_labels = (
        read_idx(found[key]) for key in MNIST_FILES
    )
    _image_pair(train_images, train_labels, found[MNIST_FILES[0]], found[MNIST_FILES[1]])
    _image_pair(test_images, test_labels, found[MNIST_FILES[2]], found[MNIST_FILES[3]])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise GdlabError(
            f"'{found[MNIST_FILES[0]]}' holds {train_images.shape[1:]} images but "
            f"'{found[MNIST_FILES[2]]}' holds {test_images.shape[1:]} images; the training and "
            f"test files come from different data sets: download them again"
        )
    default_name, label = ("fashion-mnist", "Fashion-MNIST") if fashion else ("mnist", "MNIST")
    name = name or default_name
    keep = _subsample_indices(train_labels, n_samples, seed, f"'{name}'")
    rows, cols = train_images.shape[1:]
    description = (
        f"{label} from {directory}: {len(keep)} train / {len(test_labels)} test images of "
        f"{rows}x{cols} pixels scaled to [0, 1], 10 classes"
    )
    if fashion:
        description += " (" + ", ".join(f"{i}={c}" for i, c in enumerate(FASHION_MNIST_CLASSES)) + ")"
    return _image_dataset(
        name,
        (train_images[keep].reshape(len(keep), -1), train_labels[keep]),
        (test_images.reshape(len(test_images), -1), test_labels),
        image_shape=(1, rows, cols),
        standardize=standardize,
        description=description,
    )


def find_cifar10_files(directory: str | os.PathLike) -> tuple[Path, list[str]]:
    """Locate the CIFAR-10 binary batches under `directory`.

    They are looked for in directory/cifar-10-batches-bin (the extracted archive), then in
    `directory` itself. Returns (folder, missing): the folder holding (or meant to hold) them
    and the names of CIFAR10_FILES not there.
    """
    directory = Path(directory)
    for folder in (directory / "cifar-10-batches-bin", directory):
        present = [name for name in CIFAR10_FILES if (folder / name).is_file()]
        if present:
            return folder, [name for name in CIFAR10_FILES if name not in present]
    return directory / "cifar-10-batches-bin", list(CIFAR10_FILES)


def cifar10_python_version(directory: str | os.PathLike) -> Path | None:
    """The folder holding the Python (pickled) CIFAR-10 under `directory`, if there is one."""
    directory = Path(directory)
    for folder in (directory / "cifar-10-batches-py", directory):
        if (folder / "data_batch_1").is_file() or (folder / "batches.meta").is_file():
            return folder
    return None


def cifar10_missing_message(directory: Path, who: str = "CIFAR-10") -> str:
    """The error for CIFAR-10 binary files absent from `directory`, with the fix that applies:
    the python version found, the archive not extracted, or files to place."""
    python = cifar10_python_version(directory)
    if python is not None:
        return (
            f"{who}: '{python}' holds the Python (pickled) version of CIFAR-10, which gdlab never "
            f"unpickles; download the binary version ({CIFAR10_SOURCE}) and extract it into "
            f"'{directory}'"
        )
    archive = directory / "cifar-10-binary.tar.gz"
    if archive.is_file():
        return f"{who}: '{archive}' is not extracted; run: tar xzf '{archive}' -C '{directory}'"
    folder, missing = find_cifar10_files(directory)
    return (
        f"{who} files missing in '{folder}': {', '.join(missing)}; place the CIFAR-10 binary "
        f"batches there (extract {CIFAR10_SOURCE} into '{directory}')"
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, 3072) uint8 and labels (n,) uint8 of one CIFAR-10 binary batch file."""
    raw = _read_bytes(path)
    if not raw or len(raw) % _CIFAR_RECORD_BYTES:
        raise GdlabError(
            f"'{path}' has {len(raw)} bytes, not a positive multiple of the {_CIFAR_RECORD_BYTES}-"
            f"byte CIFAR-10 record (1 label byte + 3072 pixel bytes); it is truncated or not the "
            f"binary version: download {CIFAR10_SOURCE} again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    labels = records[:, 0]
    if int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise GdlabError(
            f"'{path}' holds the label {int(labels[bad])} in record {bad}, but CIFAR-10 labels "
            f"are 0..9; the file is corrupt or from another data set (CIFAR-100's binary "
            f"records have 2 label bytes and are not supported): download {CIFAR10_SOURCE} again"
        )
    return records[:, 1:], labels


def load_cifar10_dir(
    directory: str | os.PathLike,
    *,
    seed: int = 0,
    n_samples: int | None = None,
    standardize: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load CIFAR-10 from its binary version: data_batch_1.bin .. data_batch_5.bin and
    test_batch.bin, in directory/cifar-10-batches-bin or in `directory` itself.

    Each file is a sequence of 3073-byte records: a label byte, then 1024 red, 1024 green and
    1024 blue pixel bytes (row-major 32x32). The python version (pickles) is never read. The
    files' own split is used (50000 / 10000 for the original). X: (N, 3072) float32 in [0, 1],
    image_shape (3, 32, 32); y: (N,) int64 labels 0..9 (CIFAR10_CLASSES). n_samples, seed and
    standardize as in load_mnist_dir. Raises GdlabError naming missing or malformed files.
    """
    directory = Path(directory)
    _check_flag("standardize", standardize)
    check_seed(seed)
    _check_n_samples(n_samples)
    folder, missing = find_cifar10_files(directory)
    if missing:
        raise GdlabError(cifar10_missing_message(directory))
    batches = [_read_cifar_batch(folder / file) for file in CIFAR10_FILES[:-1]]
    train_labels = np.concatenate([labels for _, labels in batches])
    name = name or "cifar10"
    keep = _subsample_indices(train_labels, n_samples, seed, f"'{name}'")
    train_pixels = np.concatenate([pixels for pixels, _ in batches])[keep]
    del batches
    test_pixels, test_labels = _read_cifar_batch(folder / CIFAR10_FILES[-1])
    description = (
        f"CIFAR-10 from {folder}: {len(keep)} train / {len(test_labels)} test colour images of "
        f"32x32 pixels scaled to [0, 1], 10 classes ("
        + ", ".join(f"{i}={c}" for i, c in enumerate(CIFAR10_CLASSES))
        + ")"
    )
    return _image_dataset(
        name,
        (train_pixels, train_labels[keep]),
        (test_pixels, test_labels),
        image_shape=(3, 32, 32),
        standardize=standardize,
        description=description,
    )


def _decode_text(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise GdlabError(
            f"'{path}' is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            f"save it as UTF-8 CSV"
        ) from None


def _csv_rows(text: str, path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each row that is not blank."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as error:
        raise GdlabError(
            f"'{path}' is not valid CSV at line {reader.line_num} ({_one_line(error)}); check its "
            f"quoting and delimiter"
        ) from None
    return rows


def _quoted(text: str) -> str:
    """A cell's text for a one-line message: stripped, shortened, control characters escaped."""
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(
    label_column: str | int, header_cells: list[str] | None, ncols: int, path: Path
) -> int:
    if isinstance(label_column, str):
        names = [cell.strip() for cell in header_cells or []]
        if label_column not in names:
            listed = ", ".join(map(_quoted, names[:20])) + (", ..." if len(names) > 20 else "")
            raise GdlabError(
                f"'{path}' has no column {_quoted(label_column)}"
                f"{did_you_mean(label_column, [n for n in names if n.isprintable()])}; its "
                f"columns are: {listed}"
            )
        return names.index(label_column)
    if not -ncols <= label_column < ncols:
        raise GdlabError(
            f"label_column={label_column} is out of range for '{path}', which has {ncols} columns; "
            f"give an index in [{-ncols}, {ncols - 1}] or a column name"
        )
    return label_column % ncols


def _parse_features(
    data: list[tuple[int, list[str]]], label: int, names: list[str], path: Path
) -> np.ndarray:
    """Features as float64 (N, F): every cell but the label's, in column order."""
    X = np.empty((len(data), len(names) - 1), dtype=np.float64)
    features = [j for j in range(len(names)) if j != label]
    for i, (line, cells) in enumerate(data):
        values = cells[:label] + cells[label + 1 :]
        try:
            X[i] = list(map(float, values))
        except ValueError:
            k = next(k for k, cell in enumerate(values) if not _is_number(cell))
            problem = "is empty"
            if values[k].strip():
                problem = f"holds {_quoted(values[k])}, which is not a number"
            raise GdlabError(
                f"'{path}' row {line}, column {names[features[k]]}: the cell {problem}; give "
                f"numeric features only (encode categories as numbers, fill in missing values)"
            ) from None
    bad = ~np.isfinite(X) | (np.abs(X) > _FLOAT32_MAX)
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        cell = _quoted(data[i][1][features[k]])
        problem = "is NaN or infinite" if not np.isfinite(X[i, k]) else "is too large for float32"
        raise GdlabError(
            f"'{path}' row {data[i][0]}, column {names[features[k]]}: the value {cell} "
            f"{problem}; remove or impute it before training"
        )
    return X


def _parse_labels(
    data: list[tuple[int, list[str]]], label: int, column: str, task_type: str | None, path: Path
) -> tuple[np.ndarray, str, int | None, str]:
    """(y, task type, number of classes, note for the description) from the label column."""
    texts = [cells[label].strip() for _, cells in data]
    lines = [line for line, _ in data]
    for line, text in zip(lines, texts):
        if not text:
            raise GdlabError(
                f"'{path}' row {line}, column {column}: the label is empty; give every row a label"
            )
    non_numeric = next((i for i, text in enumerate(texts) if not _is_number(text)), None)
    if non_numeric is not None:
        if task_type == "regression":
            raise GdlabError(
                f"'{path}' row {lines[non_numeric]}, column {column}: the target "
                f"{_quoted(texts[non_numeric])} is not a number, but task_type is 'regression'"
            )
        classes = sorted(set(texts))
        code = {name: i for i, name in enumerate(classes)}
        listed = ", ".join(
            f"{i}={name if name.isprintable() else _quoted(name)}"
            for i, name in enumerate(classes[:_MAX_LISTED])
        )
        if len(classes) > _MAX_LISTED:
            listed += f", ... ({len(classes)} classes)"
        y = np.array([code[text] for text in texts], dtype=np.int64)
        return y, "classification", len(classes), f"; classes: {listed}"
    values = np.array([float(text) for text in texts], dtype=np.float64)
    if task_type is None:
        integers = all(_INTEGER_TEXT.fullmatch(text) for text in texts)
        task_type = "classification" if integers else "regression"
    if task_type == "regression":
        bad = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)
        if bad.any():
            i = int(np.argmax(bad))
            raise GdlabError(
                f"'{path}' row {lines[i]}, column {column}: the target {_quoted(texts[i])} is "
                f"NaN, infinite or too large for float32; remove that row"
            )
        return values.reshape(-1, 1), task_type, None, ""
    for i, value in enumerate(values):
        if not (math.isfinite(value) and value == round(value) and 0 <= value < 2**31):
            problem = "is negative" if value < 0 else "is not a class"
            raise GdlabError(
                f"'{path}' row {lines[i]}, column {column}: the label {_quoted(texts[i])} {problem}; "
                f"classification labels are integers 0..K-1 or class names (for numeric targets "
                f"use task_type='regression')"
            )
    y = values.astype(np.int64)
    return y, task_type, int(y.max()) + 1, ""


def load_csv(
    path: str | os.PathLike,
    *,
    label_column: str | int = -1,
    header: bool | None = None,
    task_type: str | None = None,
    delimiter: str = ",",
    name: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a data set from a UTF-8 CSV file with one row per sample: numeric feature columns
    and one label column (`label_column`: a header name or a column index, default the last).

    header: whether the first row holds column names; None detects it (a header when a feature
    cell of the first row is not a number; a label column given by name implies a header).
    Rows are numbered as in a spreadsheet (the first line is row 1) in error messages; blank
    lines are skipped. Labels: when task_type is None, labels that are all written as integers
    mean classification (labels 0..K-1, num_classes = max + 1), other numbers mean regression
    (y: (N, 1)), and any non-numeric label means classification with the sorted distinct names
    mapped to 0..K-1 (listed in the Dataset's description). The split (seed, test_fraction,
    stratified) and `standardize` are as in load_npz. X: (N, F) float32. Raises GdlabError for
    an empty or non-UTF-8 file, ragged rows, and non-numeric, empty or non-finite cells.
    """
    path = Path(path)
    _check_task_type(task_type)
    check_seed(seed)
    check_test_fraction(test_fraction)
    _check_flag("standardize", standardize)
    if header is not None:
        _check_flag("header", header)
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise GdlabError(
            f"delimiter must be one character such as ',', ';' or a tab, got {delimiter!r}"
        )
    if isinstance(label_column, bool) or not isinstance(label_column, (str, numbers.Integral)):
        raise GdlabError(f"label_column must be a column name or index, got {label_column!r}")
    if isinstance(label_column, str) and header is False:
        raise GdlabError(
            f"label_column '{label_column}' is a column name but header is false; give the "
            f"label column's index instead, or let the first row be the header"
        )
    raw = _read_bytes(path)
    fix = "give a CSV file with one row per sample: feature columns and a label column"
    if not raw.strip():
        raise GdlabError(f"'{path}' is empty; {fix}")
    rows = _csv_rows(_decode_text(raw, path), path, delimiter)
    if not rows:
        raise GdlabError(f"'{path}' holds no rows; {fix}")
    ncols = len(rows[0][1])
    for line, cells in rows:
        if len(cells) != ncols:
            raise GdlabError(
                f"'{path}' row {line} has {len(cells)} columns but row {rows[0][0]} has {ncols} "
                f"(delimiter {delimiter!r}); give every row the same number of columns"
            )
    if ncols < 2:
        first = rows[0][1][0]
        other = next((d for d in (";", "\t", ",", "|") if d != delimiter and d in first), None)
        hint = f"; its rows contain {other!r}: set the delimiter to {other!r}" if other else ""
        raise GdlabError(
            f"'{path}' has one column with delimiter {delimiter!r}, but needs at least one "
            f"feature column and a label column{hint}"
        )
    first_cells = rows[0][1]
    if isinstance(label_column, str):
        header = True
    elif header is None:
        label_guess = _label_index(label_column, None, ncols, path)
        header = any(not _is_number(c) for j, c in enumerate(first_cells) if j != label_guess)
    label = _label_index(label_column, first_cells if header else None, ncols, path)
    names = [
        f"{_quoted(cell)} (column {j + 1})" if header else str(j + 1)
        for j, cell in enumerate(first_cells)
    ]
    data = rows[1:] if header else rows
    if not data:
        raise GdlabError(f"'{path}' has a header row but no data rows; {fix}")
    X = _parse_features(data, label, names, path)
    y, task_type, num_classes, classes_note = _parse_labels(
        data, label, names[label], task_type, path
    )
    label_name = _quoted(first_cells[label]) if header else f"column {label + 1}"
    return _arrays_to_split_dataset(
        {"X": X, "y": y},
        path,
        name=name or path.stem,
        task_type=task_type,
        seed=seed,
        test_fraction=test_fraction,
        standardize=standardize,
        description=f"loaded from {path}; label column {label_name}{classes_note}",
        dtype=dtype,
    )


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
    return {key: Path(f"{text}{key}.npy") for key in ("X", "y", "X_test", "y_test")}, Path(
        text or "."
    )


def _load_npy(path: Path, key: str, mmap: bool) -> np.ndarray:
    """One .npy array: memory-mapped copy-on-write with `mmap`, else read into memory."""
    hint = f"save it with numpy.save('{path.name}', {key})"
    raw_start = _read_head(path, hint)
    if not raw_start.startswith(_NPY_MAGIC):
        raise GdlabError(f"'{path}' is not a .npy file (no NUMPY signature); {hint}")
    try:
        # Mapping first reads only the header and fails cleanly when the data is shorter than
        # the header declares, instead of allocating the declared size up front.
        array = np.load(path, mmap_mode="c" if mmap else "r", allow_pickle=False)
    except ValueError as error:
        if "object" in str(error).lower() or "pickle" in str(error):
            raise GdlabError(
                f"'{path}' holds Python objects, which gdlab does not unpickle; save a numeric "
                f"array (e.g. numpy.asarray({key}, dtype=float))"
            ) from None
        raise GdlabError(
            f"cannot read '{path}', the file looks truncated or corrupted ({_one_line(error)}); {hint}"
        ) from None
    except (OSError, EOFError, SyntaxError, TypeError, OverflowError) as error:
        raise GdlabError(
            f"cannot read '{path}', the file looks truncated or corrupted ({_one_line(error)}); {hint}"
        ) from None
    if mmap:
        return array
    try:
        return np.array(array)
    except MemoryError:
        raise GdlabError(
            f"'{path}' ({array.nbytes} bytes) does not fit in memory; load it memory-mapped"
        ) from None


def _read_head(path: Path, fix: str) -> bytes:
    if not path.exists():
        raise GdlabError(f"data file '{path}' does not exist; {fix}")
    if path.is_dir():
        raise GdlabError(f"'{path}' is a directory, not a .npy file; {fix}")
    try:
        with path.open("rb") as f:
            return f.read(len(_NPY_MAGIC))
    except OSError as error:
        raise GdlabError(f"cannot open '{path}' ({_one_line(error)}); check its permissions") from None


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
    directory_or_prefix: str | os.PathLike,
    *,
    mmap: bool = False,
    name: str | None = None,
    task_type: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load X.npy and y.npy (and, when both exist, X_test.npy and y_test.npy).

    directory_or_prefix: a directory holding the files, the path of X.npy itself, or a prefix
    P naming P + 'X.npy', P + 'y.npy', ... (e.g. 'data/mnist_'). Arrays and type inference are
    as in load_npz; nothing is unpickled. Without mmap the arrays are read into memory, split
    (seed, test_fraction, stratified) and standardised (standardize None means true), exactly
    as load_npz would. With `mmap` X (and X_test) stay memory-mapped copy-on-write and the
    tensors share that memory, so X may be larger than RAM: X must then be float32 or float64
    and C-ordered, keeps its dtype, is never standardised (standardize must be None or false),
    and without X_test.npy the test split is the last ceil(test_fraction * N) rows (no shuffle).
    The NaN/Inf check then reads X in blocks of rows. y is always read into memory.
    """
    _check_flag("mmap", mmap)
    _check_task_type(task_type)
    check_seed(seed)
    check_test_fraction(test_fraction)
    if standardize is not None:
        _check_flag("standardize", standardize)
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
    _check_shapes(arrays, where)
    name = name or (where.name if where.is_dir() else where.name.rstrip("_-.")) or "npy"
    description = f"loaded from {paths['X']}"
    if not mmap:
        return _arrays_to_split_dataset(
            arrays,
            where,
            name=name,
            task_type=task_type,
            seed=seed,
            test_fraction=test_fraction,
            standardize=True if standardize is None else standardize,
            description=description,
            dtype=dtype,
        )
    for key in (k for k in ("X", "X_test") if k in arrays):
        row = _first_nonfinite_row(_mapped_inputs(arrays[key], paths[key]))
        if row is not None:
            raise GdlabError(
                f"'{paths[key]}' holds NaN or Inf in row {row}; remove or impute those rows "
                f"before training"
            )
    if task_type is None:
        task_type = "regression" if arrays["y"].dtype.kind == "f" else "classification"
    X = arrays["X"]
    y = _targets(arrays["y"], task_type, "y", where)
    if has_test[0]:
        X_test, y_test = arrays["X_test"], _targets(arrays["y_test"], task_type, "y_test", where)
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
    num_classes = None
    if task_type == "classification":
        num_classes = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
    ds = Dataset(
        name=name,
        X_train=X_train_t,
        y_train=_target_tensor(y, task_type, X.dtype),
        X_test=X_test_t,
        y_test=_target_tensor(y_test, task_type, X.dtype),
        task_type=task_type,
        num_classes=num_classes,
        description=description + " (memory-mapped)",
    )
    # The inputs were scanned for NaN/Inf above, file by file, with rows numbered as in the file.
    _validate_in_blocks(ds, scan=False)
    return ds


def _target_tensor(y: np.ndarray, task_type: str, dtype: np.dtype) -> torch.Tensor:
    if task_type == "classification":
        return torch.from_numpy(np.array(y, dtype=np.int64))
    return torch.from_numpy(np.array(y, dtype=dtype))


def _items(ds: object, what: str) -> Iterator[object]:
    if isinstance(ds, torch.utils.data.IterableDataset):
        return iter(ds)
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        return (ds[i] for i in range(len(ds)))
    raise GdlabError(
        f"the {what} must be a torch.utils.data.Dataset (or a sequence of (input, target) pairs), "
        f"got {type(ds).__name__}"
    )


def _collate(batch: list[object], first: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import default_collate

    for offset, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise GdlabError(
                f"item {first + offset} of the {what} is a {type(item).__name__}, not an "
                f"(input, target) pair; make __getitem__ return (x, y)"
            )
    try:
        x, y = default_collate(batch)
    except (TypeError, RuntimeError, ValueError) as error:
        raise GdlabError(
            f"cannot stack items {first}..{first + len(batch) - 1} of the {what} "
            f"({_one_line(error)[:200]}); give every item an input tensor of one shape and a "
            f"numeric target (e.g. a transform such as torchvision's ToTensor())"
        ) from None
    for part, value in (("inputs", x), ("targets", y)):
        if not isinstance(value, torch.Tensor) or value.is_complex():
            # default_collate leaves strings and other objects as a tuple of the items' values.
            shown = value[0] if isinstance(value, (tuple, list)) and value else value
            kind = str(value.dtype) if isinstance(value, torch.Tensor) else type(shown).__name__
            raise GdlabError(
                f"the {part} of the {what} are {kind} values, not real numbers; give numeric "
                f"tensors (encode class names as integers 0..K-1)"
            )
    return x, y


def _stack(ds: object, what: str, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate once over a torch data set and stack its (input, target) items."""
    xs, ys, batch, count = [], [], [], 0
    for item in _items(ds, what):
        batch.append(item)
        if len(batch) == batch_size:
            x, y = _collate(batch, count, what)
            xs.append(x)
            ys.append(y)
            count += len(batch)
            batch = []
    if batch:
        x, y = _collate(batch, count, what)
        xs.append(x)
        ys.append(y)
    if not xs:
        raise GdlabError(f"the {what} has no items; give a data set with at least one sample")
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as error:
        raise GdlabError(
            f"the items of the {what} differ in shape ({_one_line(error)[:200]}); give every "
            f"item inputs of one shape and targets of one shape"
        ) from None


def _torch_inputs(X: torch.Tensor) -> torch.Tensor:
    """Stacked inputs as float32, a scalar per item becoming one feature: (N,) -> (N, 1)."""
    X = X.to(torch.float32)
    return X.reshape(-1, 1) if X.dim() == 1 else X


def _torch_targets(y: torch.Tensor, task_type: str, what: str) -> torch.Tensor:
    if task_type == "regression":
        y = y.to(torch.float32)
        return y.reshape(-1, 1) if y.dim() == 1 else y.flatten(1)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise GdlabError(
            f"the targets of the {what} have shape {tuple(y.shape[1:])} per item; classification "
            f"needs one integer label per item (or use task_type='regression')"
        )
    if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        raise GdlabError(
            f"the targets of the {what} are not integers but task_type is 'classification'; "
            f"give labels 0..K-1 or use task_type='regression'"
        )
    return y.to(torch.int64)


def dataset_from_torch(
    ds: torch.utils.data.Dataset,
    *,
    test: torch.utils.data.Dataset | None = None,
    task_type: str | None = None,
    num_classes: int | None = None,
    name: str = "torch",
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = False,
) -> Dataset:
    """Turn any torch Dataset (map-style or iterable) of (input, target) items into a Dataset.

    The items are read once, in order, and stacked in batches of 1024 with torch's
    default_collate (no worker processes). Inputs keep their per-item shape (a scalar becomes
    one feature) and are cast to float32; samples of shape (C, H, W) set image_shape. When
    task_type is None, integer or boolean targets mean classification (num_classes = max + 1
    unless given) and floating targets regression (y: (N, k)). `test` gives the test split;
    without it `test_fraction` of the samples are held out (seed, stratified for
    classification). `standardize` standardises every input position with training statistics.
    Raises GdlabError for items that are not (input, target) pairs or cannot be stacked.
    """
    _check_task_type(task_type)
    check_seed(seed)
    check_test_fraction(test_fraction)
    _check_flag("standardize", standardize)
    if num_classes is not None and (
        not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise GdlabError(f"num_classes must be a positive integer or unset, got {num_classes!r}")
    X, y = _stack(ds, "torch data set")
    if task_type is None:
        task_type = "regression" if y.is_floating_point() else "classification"
    y = _torch_targets(y, task_type, "torch data set")
    X = _torch_inputs(X)
    if test is not None:
        X_test, y_test = _stack(test, "torch test data set")
        y_test = _torch_targets(y_test, task_type, "torch test data set")
        X_test = _torch_inputs(X_test)
        if X_test.shape[1:] != X.shape[1:]:
            raise GdlabError(
                f"the torch test data set's inputs have shape {tuple(X_test.shape[1:])} but the "
                f"training inputs have {tuple(X.shape[1:])}; give both the same input shape"
            )
        if y_test.shape[1:] != y.shape[1:]:
            raise GdlabError(
                f"the torch test data set's targets have shape {tuple(y_test.shape[1:])} but the "
                f"training targets have {tuple(y.shape[1:])}; give both the same target shape"
            )
    else:
        rows = np.arange(len(X)).reshape(-1, 1)
        train_rows, test_rows, _, _ = split_train_test(
            rows, y.numpy(), test_fraction=test_fraction, seed=seed,
            stratify=task_type == "classification",
        )
        train_index = torch.from_numpy(train_rows[:, 0])
        test_index = torch.from_numpy(test_rows[:, 0])
        X, X_test, y, y_test = X[train_index], X[test_index], y[train_index], y[test_index]
    if standardize:
        # X and X_test are fresh tensors here (stacked or indexed), never the caller's.
        _standardize_in_place(X, X_test)
    if task_type == "classification" and num_classes is None:
        num_classes = int(max(int(y.max()), int(y_test.max()) if len(y_test) else 0)) + 1
    ds_out = Dataset(
        name=name,
        X_train=X.contiguous(),
        y_train=y,
        X_test=X_test.contiguous(),
        y_test=y_test,
        task_type=task_type,
        num_classes=num_classes if task_type == "classification" else None,
        image_shape=tuple(X.shape[1:]) if X.dim() == 4 else None,
        description=f"stacked from a {type(ds).__name__}",
    )
    _validate_in_blocks(ds_out)
    return ds_out

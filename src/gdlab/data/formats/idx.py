"""MNIST-style IDX files, gzipped or not, and the MNIST / Fashion-MNIST folders made of four."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from gdlab.data.dataset import Dataset
from gdlab.data.formats.common import (
    check_flag, check_image_options, image_dataset, one_line, read_file, subsample_indices
)
from gdlab.errors import GdlabError

MNIST_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz"
)
MNIST_SOURCE = "yann.lecun.com/exdb/mnist or one of its mirrors"
FASHION_MNIST_SOURCE = "github.com/zalandoresearch/fashion-mnist (folder data/fashion)"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {
    code: np.dtype(name)
    for code, name in ((0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8"))
}
_IDX_FIX = "download the file again (an MNIST-style IDX file, gzipped or not)"


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise GdlabError(
            f"'{path}' is a corrupt or truncated gzip file ({one_line(error)}); {_IDX_FIX}"
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
    raw = read_file(path)
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
    pairs = ((images, image_path, 3, "images (N, rows, cols)"), (labels, label_path, 1, "labels (N,)"))
    for array, path, ndim, what in pairs:
        if array.dtype != np.uint8 or array.ndim != ndim:
            raise GdlabError(
                f"'{path}' holds a {array.dtype} array of shape {array.shape}, not uint8 "
                f"{what}; is it the right file? {_IDX_FIX}"
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


def _mnist_missing_message(directory: Path, missing: list[str], fashion: bool) -> str:
    label, source = ("Fashion-MNIST", FASHION_MNIST_SOURCE) if fashion else ("MNIST", MNIST_SOURCE)
    absent = "" if directory.is_dir() else ", which does not exist"
    return (
        f"{label} files missing in '{directory}'{absent}: {', '.join(missing)} (gzipped or not); "
        f"place the four {label} IDX files there, from {source}"
    )


def load_mnist_dir(
    directory: str | os.PathLike, *, fashion: bool = False, seed: int = 0, n_samples: int | None = None,
    standardize: bool = False, name: str | None = None,
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
    check_flag("fashion", fashion)
    check_image_options(seed, n_samples, standardize)
    found, missing = find_mnist_files(directory)
    if missing:
        raise GdlabError(_mnist_missing_message(directory, missing, fashion))
    train_images, train_labels, test_images, test_labels = (read_idx(found[key]) for key in MNIST_FILES)
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
    keep = subsample_indices(train_labels, n_samples, seed, f"'{name}'")
    rows, cols = train_images.shape[1:]
    description = (
        f"{label} from {directory}: {len(keep)} train / {len(test_labels)} test images of "
        f"{rows}x{cols} pixels scaled to [0, 1], 10 classes"
    )
    if fashion:
        description += " (" + ", ".join(f"{i}={c}" for i, c in enumerate(FASHION_MNIST_CLASSES)) + ")"
    return image_dataset(
        name, (train_images[keep].reshape(len(keep), -1), train_labels[keep]),
        (test_images.reshape(len(test_images), -1), test_labels), image_shape=(1, rows, cols),
        standardize=standardize, description=description
    )

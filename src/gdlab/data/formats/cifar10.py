"""The CIFAR-10 binary version: five training batches and a test batch of 3073-byte records.
The Python version (pickles) is recognised, to say what to download instead, but never read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gdlab.data.dataset import Dataset
from gdlab.data.formats.common import check_image_options, image_dataset, read_file, subsample_indices
from gdlab.errors import GdlabError

CIFAR10_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
CIFAR10_SOURCE = "cifar-10-binary.tar.gz from www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
_ARCHIVE = "cifar-10-binary.tar.gz"


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


def unreadable_version(directory: Path) -> bool:
    """Whether `directory` holds CIFAR-10 only in a form gdlab does not read: the Python version,
    or the binary archive not extracted (cifar10_missing_message says what to do)."""
    return cifar10_python_version(directory) is not None or (directory / _ARCHIVE).is_file()


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
    archive = directory / _ARCHIVE
    if archive.is_file():
        return f"{who}: '{archive}' is not extracted; run: tar xzf '{archive}' -C '{directory}'"
    folder, missing = find_cifar10_files(directory)
    return (
        f"{who} files missing in '{folder}': {', '.join(missing)}; place the CIFAR-10 binary "
        f"batches there (extract {CIFAR10_SOURCE} into '{directory}')"
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, 3072) uint8 and labels (n,) uint8 of one CIFAR-10 binary batch file."""
    raw = read_file(path)
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
    directory: str | os.PathLike, *, seed: int = 0, n_samples: int | None = None, standardize: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load CIFAR-10 from its binary version: data_batch_1.bin .. data_batch_5.bin and
    test_batch.bin, in directory/cifar-10-batches-bin or in `directory` itself.

    Each file is a sequence of 3073-byte records: a label byte, then 1024 red, 1024 green and
    1024 blue pixel bytes (row-major 32x32). The python version (pickles) is never read. The
    files' own split is used (50000 / 10000 for the original). X: (N, 3072) float32 in [0, 1],
    image_shape (3, 32, 32); y: (N,) int64 labels 0..9 (CIFAR10_CLASSES). n_samples, seed and
    standardize as in idx.load_mnist_dir. Raises GdlabError naming missing or malformed files.
    """
    directory = Path(directory)
    check_image_options(seed, n_samples, standardize)
    folder, missing = find_cifar10_files(directory)
    if missing:
        raise GdlabError(cifar10_missing_message(directory))
    batches = [_read_cifar_batch(folder / file) for file in CIFAR10_FILES[:-1]]
    train_labels = np.concatenate([labels for _, labels in batches])
    name = name or "cifar10"
    keep = subsample_indices(train_labels, n_samples, seed, f"'{name}'")
    train_pixels = np.concatenate([pixels for pixels, _ in batches])[keep]
    del batches
    test_pixels, test_labels = _read_cifar_batch(folder / CIFAR10_FILES[-1])
    classes = ", ".join(f"{i}={c}" for i, c in enumerate(CIFAR10_CLASSES))
    description = (
        f"CIFAR-10 from {folder}: {len(keep)} train / {len(test_labels)} test colour images of "
        f"32x32 pixels scaled to [0, 1], 10 classes ({classes})"
    )
    return image_dataset(
        name, (train_pixels, train_labels[keep]), (test_pixels, test_labels),
        image_shape=(3, 32, 32), standardize=standardize, description=description
    )

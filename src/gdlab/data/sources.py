"""Every kind of data a run takes, as a Dataset: a name or a path (what ``--data`` accepts),
tensors or arrays, a gdlab Dataset, a torch Dataset or a DataLoader.

* a name or a path: :func:`load_data_source` (presets and local data sets from
  :mod:`gdlab.data.presets`, files by their format through :mod:`gdlab.data.formats`);
* ``(X, y)`` or ``(X, y, X_test, y_test)``: torch tensors or NumPy arrays, X: (N, ...) real
  numbers, y: (N,) integer labels (classification, ``num_classes`` = max label + 1 unless
  given) or (N,) / (N, k) floats (regression; a 1-D y becomes (N, 1)). All N rows are training
  rows; a test set is only what ``test`` gives. Nothing is standardised or split.
* a gdlab ``Dataset``: as it is.
* a ``torch.utils.data.Dataset`` of (input, target) items: read once into tensors, in the
  dataset's order, see :func:`dataset_from_torch`;
* a ``DataLoader``: streamed, its rows never held in memory at once (:func:`dataset_from_loader`).
  A full-batch pass reads the loader's batches (its workers, collate_fn and batch size apply; its
  shuffling changes only the order of the sum); a mini-batch or stochastic step reads the rows
  the run's schedule draws (regime and seed decide the sample order, as for every other source)
  from the loader's dataset in this process and collates them with the loader's collate_fn.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from gdlab.data import presets
from gdlab.data.dataset import Dataset, StreamedDataset, validate_dataset
from gdlab.data.formats import cifar10, csv, idx, npy, npz
from gdlab.data.formats.common import (
    check_split_options, check_task_type, one_line, standardize_in_place, validate_in_blocks
)
from gdlab.data.split import is_integer, split_train_test
from gdlab.engine.chunks import loader_rows
from gdlab.errors import GdlabError, did_you_mean

DataObject = Any  # tensors or arrays (X, y[, X_test, y_test]), Dataset, torch Dataset or DataLoader
_IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")
_SUFFIXES = ((".npz", "npz"), (".npy", "npy"), (".csv", "csv"), (".tsv", "tsv"), (".tab", "tsv"))


def _resolve(path: Path, explicit_dir: str | os.PathLike | None) -> Path:
    """`path`, or the same relative path under the data directory when only that exists."""
    if path.exists() or path.is_absolute():
        return path
    try:
        candidate = presets.data_dir(explicit_dir) / path
    except GdlabError:
        return path
    return candidate if candidate.exists() else path


def _source_kind(path: Path, text: str) -> tuple[str, Path]:
    """(format, path to read) for a data path: npz, npy, csv, tsv, mnist, fashion-mnist, cifar10."""
    lower = path.name.lower()
    fashion = "fashion" in str(path).lower()
    if path.is_dir():
        if (path / "X.npy").is_file():
            return "npy", path
        if cifar10.find_cifar10_files(path)[1] != list(cifar10.CIFAR10_FILES):
            return "cifar10", path
        if idx.find_mnist_files(path)[0]:
            return ("fashion-mnist" if fashion else "mnist"), path
        if cifar10.unreadable_version(path):
            return "cifar10", path  # its reader explains what to download or extract
        raise GdlabError(f"directory '{path}' holds no data gdlab can read; give a folder with X.npy and y.npy, the "
                         f"four MNIST IDX files or the CIFAR-10 binary batches, or a .npz, .npy, .csv or .tsv file")
    for suffix, kind in _SUFFIXES:
        if lower.endswith(suffix):
            return kind, path
    if lower.endswith(("-ubyte", "-ubyte.gz")):
        return ("fashion-mnist" if fashion else "mnist"), path.parent
    if lower in cifar10.CIFAR10_FILES:
        return "cifar10", path.parent
    names = sorted([*presets.PRESETS, *presets.LOCAL_DATA_SETS])
    if not path.exists():
        raise GdlabError(f"data '{text}' is neither an existing file nor a known name{did_you_mean(text, names)}; "
                         f"give a path (.npz, .npy, .csv, .tsv or a directory) or one of: {', '.join(names)}")
    raise GdlabError(f"cannot tell the format of '{path}' from its name; give a .npz, .npy, .csv or .tsv file, "
                     f"a directory of MNIST IDX or CIFAR-10 binary files, or one of: {', '.join(names)}")


def load_data_source(
    data: str | os.PathLike, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
    test_fraction: float = 0.2, standardize: bool | None = None, task_type: str | None = None,
    n_samples: int | None = None, mmap: bool = False, label_column: str | int = -1, name: str | None = None,
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
    if not isinstance(data, (str, os.PathLike)) or not os.fspath(data):
        raise GdlabError(f"data must be a file, a directory or a preset name, got {data!r}")
    text = os.fspath(data)
    if text in presets.PRESETS:
        kind, path = presets.PRESETS[text].data_set, None
    elif text in presets.LOCAL_DATA_SETS:
        kind, path = text, None
    else:
        kind, path = _source_kind(_resolve(Path(text).expanduser(), data_dir), text)

    if mmap and kind != "npy":
        raise GdlabError(f"mmap applies to .npy data only, not to '{text}'; leave it off")
    if label_column != -1 and kind not in ("csv", "tsv"):
        raise GdlabError(f"label_column applies to CSV files only, not to '{text}'; leave it unset")
    if n_samples is not None and kind not in _IMAGE_SETS:
        raise GdlabError(f"n_samples applies to tasks and image data sets only, not to '{text}'; subsample the "
                         f"file before loading it, or leave n_samples unset")
    if kind in _IMAGE_SETS:
        if task_type not in (None, "classification"):
            raise GdlabError(f"'{text}' is a classification data set; leave task_type unset or 'classification'")
        options = dict(seed=seed, n_samples=n_samples, standardize=bool(standardize))
        if path is None and text in presets.PRESETS:
            return presets.load_preset(text, data_dir, **options)
        if path is None:
            return presets.load_local_data_set(kind, data_dir, **options)
        if kind == "cifar10":
            return cifar10.load_cifar10_dir(path, name=name, **options)
        return idx.load_mnist_dir(path, fashion=kind == "fashion-mnist", name=name, **options)
    split = dict(name=name, task_type=task_type, seed=seed, test_fraction=test_fraction, dtype=dtype)
    if kind == "npy":
        return npy.load_npy_pair(path, mmap=mmap, standardize=standardize, **split)
    standardize = True if standardize is None else standardize
    if kind == "npz":
        return npz.load_npz(path, standardize=standardize, **split)
    delimiter = "\t" if kind == "tsv" else ","
    return csv.load_csv(path, label_column=label_column, delimiter=delimiter, standardize=standardize, **split)


def _tensor(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise GdlabError(f"{what} is a NumPy array of Python objects; give numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise GdlabError(f"{what} must be a torch tensor or a NumPy array, got {type(value).__name__}")


def _inputs(X: torch.Tensor, what: str) -> torch.Tensor:
    if X.dim() == 0:
        raise GdlabError(f"{what} is a scalar; give one row per sample, shape (N, features, ...)")
    if X.dim() == 1:
        X = X.unsqueeze(1)
    return X if X.is_floating_point() else X.to(torch.float32)


def _targets(y: torch.Tensor, task_type: str, what: str) -> torch.Tensor:
    if task_type == "classification":
        if y.is_floating_point():
            if not bool((y == y.round()).all()):
                raise GdlabError(f"{what} holds fractional values but the task is classification; give "
                                 f"integer class labels or task_type='regression'")
        return y.reshape(-1).to(torch.int64)
    y = y if y.is_floating_point() else y.to(torch.float32)
    return y.unsqueeze(1) if y.dim() == 1 else y


def dataset_from_tensors(
    X: object, y: object, X_test: object = None, y_test: object = None, *, task_type: str | None = None,
    num_classes: int | None = None, name: str = "tensors",
) -> Dataset:
    """A validated Dataset from tensors or arrays (see the module docstring). ``task_type``
    None: integer or boolean y means classification, floating y regression."""
    check_task_type(task_type)
    if (X_test is None) != (y_test is None):
        raise GdlabError("give both X_test and y_test for a test set, or neither")
    X_t, y_t = _inputs(_tensor(X, "X"), "X"), _tensor(y, "y")
    if task_type is None:
        task_type = "regression" if y_t.is_floating_point() else "classification"
    y_t = _targets(y_t, task_type, "y")
    if X_test is None:
        X_e, y_e = X_t[:0], y_t[:0]
    else:
        X_e = _inputs(_tensor(X_test, "X_test"), "X_test")
        y_e = _targets(_tensor(y_test, "y_test"), task_type, "y_test")
        if X_e.shape[1:] != X_t.shape[1:]:
            raise GdlabError(f"X_test rows have shape {tuple(X_e.shape[1:])} but X rows have "
                             f"{tuple(X_t.shape[1:])}; give both the same row shape")
        X_e, y_e = X_e.to(X_t.dtype), y_e.to(y_t.dtype)
    if task_type == "classification" and num_classes is None and y_t.numel():
        num_classes = int(max(int(y_t.max()), int(y_e.max()) if y_e.numel() else 0)) + 1
    ds = Dataset(name=name, X_train=X_t, y_train=y_t, X_test=X_e, y_test=y_e, task_type=task_type,
                 num_classes=num_classes if task_type == "classification" else None,
                 image_shape=tuple(X_t.shape[1:]) if X_t.dim() == 4 else None,
                 description=f"{X_t.shape[0]} rows from in-memory tensors")
    validate_dataset(ds)
    return ds


def _items(ds: object, what: str) -> Iterator[object]:
    if isinstance(ds, torch.utils.data.IterableDataset):
        return iter(ds)
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        return (ds[i] for i in range(len(ds)))
    raise GdlabError(f"the {what} must be a torch.utils.data.Dataset (or a sequence of (input, target) pairs), "
                     f"got {type(ds).__name__}")


def _collate(batch: list[object], first: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    for offset, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise GdlabError(f"item {first + offset} of the {what} is a {type(item).__name__}, not an "
                             f"(input, target) pair; make __getitem__ return (x, y)")
    try:
        x, y = default_collate(batch)
    except (TypeError, RuntimeError, ValueError) as error:
        raise GdlabError(f"cannot stack items {first}..{first + len(batch) - 1} of the {what} "
                         f"({one_line(error)[:200]}); give every item an input tensor of one shape and a "
                         f"numeric target (e.g. a transform such as torchvision's ToTensor())") from None
    for part, value in (("inputs", x), ("targets", y)):
        if not isinstance(value, torch.Tensor) or value.is_complex():
            # default_collate leaves strings and other objects as a tuple of the items' values.
            shown = value[0] if isinstance(value, (tuple, list)) and value else value
            kind = str(value.dtype) if isinstance(value, torch.Tensor) else type(shown).__name__
            raise GdlabError(f"the {part} of the {what} are {kind} values, not real numbers; give numeric "
                             f"tensors (encode class names as integers 0..K-1)")
    return x, y


def _stack(ds: object, what: str, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate once over a torch data set and stack its (input, target) items."""
    items, parts = _items(ds, what), []
    while batch := list(itertools.islice(items, batch_size)):
        parts.append(_collate(batch, batch_size * len(parts), what))
    if not parts:
        raise GdlabError(f"the {what} has no items; give a data set with at least one sample")
    xs, ys = zip(*parts)
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as error:
        raise GdlabError(f"the items of the {what} differ in shape ({one_line(error)[:200]}); give every "
                         f"item inputs of one shape and targets of one shape") from None


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
        raise GdlabError(f"the targets of the {what} have shape {tuple(y.shape[1:])} per item; classification "
                         f"needs one integer label per item (or use task_type='regression')")
    if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        raise GdlabError(f"the targets of the {what} are not integers but task_type is 'classification'; "
                         f"give labels 0..K-1 or use task_type='regression'")
    return y.to(torch.int64)


def dataset_from_torch(
    ds: torch.utils.data.Dataset, *, test: torch.utils.data.Dataset | None = None,
    task_type: str | None = None, num_classes: int | None = None, name: str = "torch", seed: int = 0,
    test_fraction: float = 0.2, standardize: bool = False,
) -> Dataset:
    """Turn any torch Dataset (map-style or iterable) of (input, target) items into a Dataset.

    The items are read once, in order, and stacked in batches of 1024 with torch's default_collate (no worker
    processes). Inputs keep their per-item shape (a scalar becomes one feature) and are cast to float32; samples of
    shape (C, H, W) set image_shape. When task_type is None, integer or boolean targets mean classification
    (num_classes = max + 1 unless given) and floating targets regression (y: (N, k)). `test` gives the test split;
    without it `test_fraction` of the samples are held out (seed, stratified for classification). `standardize`
    standardises every input position with training statistics. Raises GdlabError for items that are not
    (input, target) pairs or cannot be stacked.
    """
    check_split_options(task_type, seed, test_fraction, standardize)
    if num_classes is not None and (not is_integer(num_classes) or num_classes < 1):
        raise GdlabError(f"num_classes must be a positive integer or unset, got {num_classes!r}")
    X, y = _stack(ds, "torch data set")
    if task_type is None:
        task_type = "regression" if y.is_floating_point() else "classification"
    y, X = _torch_targets(y, task_type, "torch data set"), _torch_inputs(X)
    if test is not None:
        X_test, y_test = _stack(test, "torch test data set")
        y_test, X_test = _torch_targets(y_test, task_type, "torch test data set"), _torch_inputs(X_test)
        for part, given, training in (("input", X_test, X), ("target", y_test, y)):
            if given.shape[1:] != training.shape[1:]:
                raise GdlabError(f"the torch test data set's {part}s have shape {tuple(given.shape[1:])} but the "
                                 f"training {part}s have {tuple(training.shape[1:])}; give both the same {part} shape")
    else:
        rows = np.arange(len(X)).reshape(-1, 1)
        train_rows, test_rows, _, _ = split_train_test(rows, y.numpy(), test_fraction=test_fraction, seed=seed,
                                                       stratify=task_type == "classification")
        train_index, test_index = torch.from_numpy(train_rows[:, 0]), torch.from_numpy(test_rows[:, 0])
        X, X_test, y, y_test = X[train_index], X[test_index], y[train_index], y[test_index]
    if standardize:
        # X and X_test are fresh tensors here (stacked or indexed), never the caller's.
        standardize_in_place(X, X_test)
    if task_type == "classification" and num_classes is None:
        num_classes = int(max(int(y.max()), int(y_test.max()) if len(y_test) else 0)) + 1
    ds_out = Dataset(name=name, X_train=X.contiguous(), y_train=y, X_test=X_test.contiguous(), y_test=y_test,
                     task_type=task_type, num_classes=num_classes if task_type == "classification" else None,
                     image_shape=tuple(X.shape[1:]) if X.dim() == 4 else None,
                     description=f"stacked from a {type(ds).__name__}")
    validate_in_blocks(ds_out)
    return ds_out


def dataset_from_loader(loader: DataLoader, *, test: DataLoader | None = None, task_type: str | None = None,
                        num_classes: int | None = None) -> StreamedDataset:
    """A :class:`StreamedDataset` over ``loader`` (and the ``test`` loader): the rows stay in the
    loaders and are read batch by batch at every pass. One pass over each loader now checks the
    batches as every reader checks its data (real, finite inputs of one shape; targets as the task
    type needs, see :func:`dataset_from_torch`) and counts the classes (max label + 1 unless
    ``num_classes`` is given); a None ``task_type`` is inferred from the first batch's targets."""
    check_task_type(task_type)
    if test is not None and not isinstance(test, DataLoader):
        raise GdlabError("test must be a DataLoader when the training data is one; give "
                         "test=DataLoader(test_set, batch_size=...)")
    probe, target, top, rows = None, None, -1, [0, 0]
    for split, (what, source) in enumerate((("training DataLoader", loader), ("test DataLoader", test))):
        batches = () if source is None else loader_rows(source, device=torch.device("cpu"), dtype=torch.float32)
        try:
            for Xc, yc in batches:
                if not Xc.is_floating_point():
                    raise GdlabError(f"the {what} yields {Xc.dtype} inputs, not real numbers; convert them in "
                                     f"the dataset (e.g. torchvision's ToTensor() or x.float())")
                if probe is None:
                    task_type = task_type or ("regression" if yc.is_floating_point() else "classification")
                    probe = Xc[:2].clone()
                y = _torch_targets(yc, task_type, what)
                if Xc.shape[1:] != probe.shape[1:] or y.shape[1:] != (target or y.shape[1:]):
                    raise GdlabError(f"the batch at row {rows[split]} of the {what} has inputs {tuple(Xc.shape[1:])} "
                                     f"and targets {tuple(y.shape[1:])} per row, unlike the first batch; give every "
                                     f"row inputs of one shape and targets of one shape")
                target = y.shape[1:]
                top = max(top, int(y.max())) if task_type == "classification" else top
                validate_dataset(Dataset(what, Xc, y, Xc[:0], y[:0], task_type, num_classes=num_classes or top + 1))
                rows[split] += len(Xc)
        except (RuntimeError, TypeError, ValueError, IndexError) as error:  # from the dataset or collate_fn
            raise GdlabError(f"cannot read a batch of the {what} ({one_line(error)[:200]}); give every item an "
                             "input tensor of one shape and a numeric target") from None
    regression, name = task_type == "regression", type(loader.dataset).__name__
    empty_y = torch.empty(0, *target, dtype=torch.float32 if regression else torch.int64)
    return StreamedDataset(
        name, loader, None, test if test is not None else probe[:0], None if test is not None else empty_y,
        task_type, None if regression else (num_classes or top + 1),
        tuple(probe.shape[1:]) if probe.dim() == 4 else None, f"streamed from a DataLoader over a {name} "
        f"({rows[0]} rows, batches of {loader.batch_size})", rows=tuple(rows), probe=probe,
        target_dim=int(target[0]) if regression else None)


def as_dataset(
    data: DataObject, *, test: DataObject = None, task_type: str | None = None, num_classes: int | None = None
) -> Dataset:
    """The Dataset for an in-memory data object (see the module docstring); ``test`` is the test
    set in the same form (a pair of tensors, a torch Dataset or a DataLoader)."""
    if isinstance(data, Dataset):
        if test is not None:
            raise GdlabError("a gdlab Dataset carries its own test split; leave test out")
        return data
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 4):
            raise GdlabError(f"data as a tuple must be (X, y) or (X, y, X_test, y_test), got {len(data)} items")
        if len(data) == 4 and test is not None:
            raise GdlabError("data already holds X_test and y_test; leave test out")
        parts = list(data)
        if test is not None:
            if not isinstance(test, (tuple, list)) or len(test) != 2:
                raise GdlabError("test for tensor data must be a pair (X_test, y_test)")
            parts += list(test)
        return dataset_from_tensors(*parts, task_type=task_type, num_classes=num_classes)
    if isinstance(data, DataLoader):
        return dataset_from_loader(data, test=test, task_type=task_type, num_classes=num_classes)
    if isinstance(test, DataLoader):
        test = test.dataset
    if isinstance(data, torch.utils.data.Dataset):
        # test_fraction 0 without a test set: all rows train, as for tensors.
        return dataset_from_torch(data, test=test, task_type=task_type, num_classes=num_classes,
                                  name=type(data).__name__, test_fraction=0.0)
    raise GdlabError(f"data must be a task name, a path, tensors (X, y), a gdlab Dataset, a torch Dataset "
                     f"or a DataLoader; got {type(data).__name__}")

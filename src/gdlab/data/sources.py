"""In-memory data as a Dataset: tensors or arrays, a gdlab Dataset, a torch Dataset or DataLoader.

Names and paths (``"digits"``, ``"data.npz"``) are resolved by the run's config
(:func:`gdlab.data.load_data_source`, :func:`gdlab.data.load_task`); this module turns the
objects a researcher already holds into the same :class:`Dataset`:

* ``(X, y)`` or ``(X, y, X_test, y_test)``: torch tensors or NumPy arrays, X: (N, ...) real
  numbers, y: (N,) integer labels (classification, ``num_classes`` = max label + 1 unless
  given) or (N,) / (N, k) floats (regression; a 1-D y becomes (N, 1)). All N rows are training
  rows; a test set is only what ``test`` gives. Nothing is standardised or split.
* a gdlab ``Dataset``: as it is.
* a ``torch.utils.data.Dataset`` of (input, target) items, or a ``DataLoader`` over one: the
  items are read once, in the dataset's order (a loader's own shuffling is ignored: the run's
  regime and seed decide the sample order, as for every other source), see
  :func:`gdlab.data.dataset_from_torch`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from gdlab.data.dataset import TASK_TYPES, Dataset, validate_dataset
from gdlab.data.readers import dataset_from_torch
from gdlab.errors import GdlabError, unknown_name

DataObject = Any  # tensors or arrays (X, y[, X_test, y_test]), Dataset, torch Dataset or DataLoader


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
    X: object,
    y: object,
    X_test: object = None,
    y_test: object = None,
    *,
    task_type: str | None = None,
    num_classes: int | None = None,
    name: str = "tensors",
) -> Dataset:
    """A validated Dataset from tensors or arrays (see the module docstring). ``task_type``
    None: integer or boolean y means classification, floating y regression."""
    if task_type is not None and task_type not in TASK_TYPES:
        raise unknown_name("task type", task_type, TASK_TYPES)
    if (X_test is None) != (y_test is None):
        raise GdlabError("give both X_test and y_test for a test set, or neither")
    X_t, y_t = _inputs(_tensor(X, "X"), "X"), _tensor(y, "y")
    if task_type is None:
        task_type = "regression" if y_t.is_floating_point() else "classification"
    y_t = _targets(y_t, task_type, "y")
    if X_test is None:
        X_e, y_e = X_t[:0], y_t[:0]
    else:
        X_e, y_e = _inputs(_tensor(X_test, "X_test"), "X_test"), _targets(_tensor(y_test, "y_test"), task_type,
                                                                         "y_test")
        if X_e.shape[1:] != X_t.shape[1:]:
            raise GdlabError(f"X_test rows have shape {tuple(X_e.shape[1:])} but X rows have "
                             f"{tuple(X_t.shape[1:])}; give both the same row shape")
        X_e = X_e.to(X_t.dtype)
        y_e = y_e.to(y_t.dtype)
    if task_type == "classification" and num_classes is None and y_t.numel():
        num_classes = int(max(int(y_t.max()), int(y_e.max()) if y_e.numel() else 0)) + 1
    ds = Dataset(name=name, X_train=X_t, y_train=y_t, X_test=X_e, y_test=y_e, task_type=task_type,
                 num_classes=num_classes if task_type == "classification" else None,
                 image_shape=tuple(X_t.shape[1:]) if X_t.dim() == 4 else None,
                 description=f"{X_t.shape[0]} rows from in-memory tensors")
    validate_dataset(ds)
    return ds


def as_dataset(
    data: DataObject,
    *,
    test: DataObject = None,
    task_type: str | None = None,
    num_classes: int | None = None,
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
        data = data.dataset
    if isinstance(test, DataLoader):
        test = test.dataset
    if isinstance(data, torch.utils.data.Dataset):
        # test_fraction 0 without a test set: all rows train, as for tensors.
        return dataset_from_torch(data, test=test, task_type=task_type, num_classes=num_classes,
                                  name=type(data).__name__, test_fraction=0.0)
    raise GdlabError(f"data must be a task name, a path, tensors (X, y), a gdlab Dataset, a torch Dataset "
                     f"or a DataLoader; got {type(data).__name__}")

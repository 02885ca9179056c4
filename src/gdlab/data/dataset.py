"""The Dataset: training and test tensors plus the metadata a run needs."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from gdlab.errors import GdlabError

TASK_TYPES = ("regression", "classification")


@dataclass
class Dataset:
    """Tensors `(X, y)` for training and test, and what they mean.

    X_train: (N, *input_shape) floating point; y_train: (N,) int64 class labels for
    classification, (N, output_dim) floating point targets for regression. Same for the test
    split (which may hold zero samples). `image_shape` (C, H, W) or (C, L) tells a CNN how to
    view a flat feature vector; None when the features are not an image or signal.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    task_type: str
    num_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    description: str = ""
    streamed = False  # the rows are tensors (see StreamedDataset)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.X_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample's input, without the leading N."""
        return tuple(self.X_train.shape[1:])

    @property
    def output_dim(self) -> int:
        """Number of classes (classification) or target dimensions (regression)."""
        if self.task_type == "classification":
            return int(self.num_classes)
        return int(self.y_train.shape[1])

    def head(self, k: int = 2) -> torch.Tensor:
        """The first ``k`` training inputs (what a model's input check runs)."""
        return self.X_train[:k]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Dataset":
        """Return a copy with the tensors on `device`; floating tensors cast to `dtype`."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype=dtype)
            return t.to(device) if device is not None else t

        return replace(
            self, X_train=move(self.X_train), y_train=move(self.y_train), X_test=move(self.X_test),
            y_test=move(self.y_test),
        )


@dataclass
class StreamedDataset(Dataset):
    """A Dataset whose rows stay in DataLoaders, read batch by batch at every pass (memory bounded
    by one batch): ``X_train`` is the training loader, ``X_test`` the test loader or an empty tensor,
    ``y_train``/``y_test`` None; ``rows`` (training, test), ``probe`` (the first inputs) and
    ``target_dim`` stand in for the tensors' shapes. Made by :func:`gdlab.data.sources.dataset_from_loader`;
    each batch is cast to the run's dtype and moved to its device as it is read."""

    rows: tuple[int, int] = (0, 0)
    probe: torch.Tensor | None = None
    target_dim: int | None = None
    streamed = True
    n_train = property(lambda self: self.rows[0])
    n_test = property(lambda self: self.rows[1])
    input_shape = property(lambda self: tuple(self.probe.shape[1:]))
    output_dim = property(lambda self: int(self.num_classes if self.task_type == "classification" else self.target_dim))

    def head(self, k: int = 2) -> torch.Tensor:
        return self.probe[:k]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Dataset":
        return replace(self, probe=self.probe.to(dtype=dtype or self.probe.dtype))


def validate_dataset(ds: Dataset) -> None:
    """Raise GdlabError if `ds` cannot be trained on: empty, mismatched lengths, non-finite values,
    labels out of range, wrong label dtype or shape."""
    where = f"data set '{ds.name}'"
    if ds.task_type not in TASK_TYPES:
        raise GdlabError(f"{where}: task_type must be one of {TASK_TYPES}, got '{ds.task_type}'")
    if ds.n_train == 0:
        raise GdlabError(f"{where} has no training samples; give a data set with at least one sample")
    for split, X, y in (("train", ds.X_train, ds.y_train), ("test", ds.X_test, ds.y_test)):
        if X.shape[0] != y.shape[0]:
            raise GdlabError(
                f"{where}: {split} inputs have {X.shape[0]} samples but {split} targets have "
                f"{y.shape[0]}; give X and y with the same number of rows"
            )
        if not X.is_floating_point():
            raise GdlabError(f"{where}: {split} inputs must be floating point, got {X.dtype}")
        bad = (~torch.isfinite(X)).nonzero()
        if bad.numel():
            raise GdlabError(
                f"{where}: {split} inputs contain NaN or Inf ({bad.shape[0]} values, first at "
                f"row {int(bad[0, 0])}); remove or impute them before training"
            )
        if ds.task_type == "classification":
            if y.is_floating_point() or y.dim() != 1:
                raise GdlabError(
                    f"{where}: {split} labels must be a 1-D integer tensor for classification, "
                    f"got {tuple(y.shape)} {y.dtype}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= int(ds.num_classes or 0)):
                raise GdlabError(
                    f"{where}: {split} labels range over [{int(y.min())}, {int(y.max())}] but the "
                    f"task has {ds.num_classes} classes; labels must be integers in "
                    f"[0, {int(ds.num_classes or 0) - 1}]"
                )
        else:
            if not y.is_floating_point() or y.dim() != 2:
                raise GdlabError(
                    f"{where}: {split} targets must be a 2-D float tensor (N, outputs) for "
                    f"regression, got {tuple(y.shape)} {y.dtype}"
                )
            if not bool(torch.isfinite(y).all()):
                raise GdlabError(
                    f"{where}: {split} targets contain NaN or Inf; remove those rows before training"
                )

"""The rows of a data set as a sequence of chunks: tensors sliced, or a DataLoader's batches.

Every full-batch quantity (loss, gradient, Hessian-vector product) is a sum over chunks of the
chunk's mean loss weighted by ``chunk_rows / N``; :class:`Rows` is what those sums iterate over.
From tensors ``X`` (N, ...) and ``y`` the chunks are consecutive slices of ``chunk_size`` rows.
From a ``torch.utils.data.DataLoader`` they are the loader's batches, streamed one at a time, so
memory is bounded by one batch and data larger than memory (files, image folders, a fixed
augmentation pipeline) needs no conversion. A loader's N must be known before the first batch
(the weights depend on it) and the loader must visit every row exactly once per pass: a
map-style dataset with its default, sequential or random (without replacement) sampler and no
``drop_last`` that would drop rows. Anything else is refused with a GdlabError naming the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

from gdlab.errors import GdlabError


@dataclass
class Rows:
    """``n`` rows of (input, target) pairs, iterated chunk by chunk as ``(X_chunk, y_chunk)``;
    the rows run along dimension ``dim`` of the chunks (1 for stacked copies' own rows)."""

    n: int
    _chunks: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    streamed: bool = False
    dim: int = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._chunks()


def spans(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``chunk_size`` rows (None: one chunk) over n rows."""
    size = max(1, n if chunk_size is None else min(int(chunk_size), n))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def tensor_rows(X: torch.Tensor, y: torch.Tensor, chunk_size: int | None, dim: int = 0) -> Rows:
    """The rows of ``X`` (N, ...) and ``y`` (N, ...) in consecutive slices of ``chunk_size``; with
    ``dim`` 1, of X (K, N, ...) and y (K, N, ...) along their second dimension."""
    n = int(X.shape[dim])

    def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, stop in spans(n, chunk_size):
            if stop - start == n:  # one chunk of all rows: the tensors themselves, no slicing op
                yield X, y
            else:
                yield X.narrow(dim, start, stop - start), y.narrow(dim, start, stop - start)

    return Rows(n, chunks, dim=dim)


def _fix() -> str:
    return ("give a DataLoader over a map-style dataset (with __len__) whose sampler visits every "
            "row once, e.g. DataLoader(dataset, batch_size=256, shuffle=False)")


def loader_row_count(loader: DataLoader) -> int:
    """N, the rows one pass of ``loader`` yields, checked to be every row of its dataset once."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise GdlabError(f"a full-batch pass needs the number of rows before the first batch, but this "
                         f"DataLoader's {type(dataset).__name__} has no length; {_fix()}")
    n = len(dataset)
    batches = loader.batch_sampler
    if batches is None:
        raise GdlabError("this DataLoader has batch_size=None and yields single items without a batch "
                         "dimension; give it a batch_size")
    sampler = getattr(batches, "sampler", None)
    if type(batches) is not BatchSampler or not isinstance(sampler, (SequentialSampler, RandomSampler)):
        raise GdlabError(f"this DataLoader's {type(batches).__name__} / {type(sampler).__name__} may not "
                         f"visit every row exactly once per pass, so its batches are not the full data "
                         f"set; {_fix()}")
    if isinstance(sampler, RandomSampler) and (sampler.replacement or sampler.num_samples != n):
        raise GdlabError("this DataLoader samples with replacement or a different number of rows, so a "
                         f"pass is not the full data set; {_fix()}")
    if batches.drop_last and n % batches.batch_size:
        raise GdlabError(f"this DataLoader drops the last {n % batches.batch_size} of {n} rows "
                         f"(drop_last=True); use drop_last=False for a full-batch pass")
    if n == 0:
        raise GdlabError("the DataLoader's dataset has no rows; give a data set with at least one row")
    return n


def _pair(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Sequence) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1]
    raise GdlabError(f"a DataLoader batch must be an (inputs, targets) pair of tensors, got "
                     f"{type(batch).__name__}; give a dataset whose items are (input, target) pairs")


def _moved(pair: tuple[torch.Tensor, torch.Tensor], device: torch.device, dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``, floating inputs and targets cast to ``dtype``, integer labels kept."""
    return tuple(t.to(device, dtype if t.is_floating_point() else t.dtype, non_blocking=True) for t in pair)


def loader_batch(loader: DataLoader, rows: Sequence[int], *, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of the loader's dataset as one batch, collated as the loader collates (a
    mini-batch step's rows, read in this process), on ``like``'s device and floating dtype."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return _moved(_pair(loader.collate_fn([loader.dataset[i] for i in rows])), like.device, dtype)


def loader_rows(loader: DataLoader, *, device: torch.device, dtype: torch.dtype) -> Rows:
    """The batches of ``loader``, moved to ``device``; floating inputs and targets cast to
    ``dtype`` (the parameters'), integer labels kept. Each pass checks it yielded N rows."""
    n = loader_row_count(loader)

    def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen = 0
        for batch in loader:
            Xc, yc = _moved(_pair(batch), device, dtype)
            seen += int(Xc.shape[0])
            yield Xc, yc
        if seen != n:
            raise GdlabError(f"the DataLoader yielded {seen} rows in one pass but its dataset has {n}; "
                             f"{_fix()}")

    return Rows(n, chunks, streamed=True)


def as_rows(
    X: torch.Tensor | DataLoader, y: torch.Tensor | None, chunk_size: int | None, *, like: torch.Tensor
) -> Rows:
    """:func:`tensor_rows` for tensors, :func:`loader_rows` (on ``like``'s device and floating dtype)
    for a DataLoader given as ``X`` with ``y`` None."""
    if isinstance(X, DataLoader):
        if y is not None:
            raise GdlabError("give either tensors X and y or one DataLoader (with y left out), not both")
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return loader_rows(X, device=like.device, dtype=dtype)
    if y is None:
        raise GdlabError("targets y are missing; give X and y, or a DataLoader of (input, target) batches")
    return tensor_rows(X, y, chunk_size)

"""The full-batch objective, defined once: ``L(theta) = sum_c l(f(X_c; theta), y_c) * rows_c / N + R``.

The data term is accumulated over chunks, each chunk's mean loss weighted by ``rows_c / N``, so
the result is the same (to float rounding) for every chunk size while memory is bounded by one
chunk's activations. ``R`` (the regulariser) is added once, outside the chunk loop. The chunks
are :class:`gdlab.engine.chunks.Rows`: slices of tensors, or a DataLoader's batches.

Everything that evaluates the objective derives from :func:`chunk_terms` (the chunk loop) and
:func:`correct` (the accuracy): the eager loss and gradient (:func:`full_batch_loss_and_grad`,
:func:`full_batch_loss`, :func:`evaluate`, :class:`FullBatchObjective`), the pure function of the
parameters that the compiled stepper differentiates (:class:`FunctionalObjective`), the stacked
copies' objective (:mod:`gdlab.engine.steppers.stacked`) and the Hessian-vector products of
:mod:`gdlab.diagnostics.hessian`.

Models whose forward pass depends on the batch (BatchNorm in training mode) or on randomness
(Dropout in training mode) have no single "full-batch gradient" unless one chooses:

* ``model.eval()`` (config ``layer_mode: eval``): BatchNorm uses its running statistics, Dropout
  is off, the objective is a deterministic function of theta and every chunk size gives the same
  gradient as one pass over the whole set.
* ``model.train()`` (config ``layer_mode: train``, the default): BatchNorm normalises each chunk
  with that chunk's statistics and Dropout draws fresh masks. The result equals the whole-set
  gradient only when one chunk holds the whole set (``chunk_size >= N``); with smaller chunks it
  is the exact gradient of the chunk-averaged objective, which depends on the chunk size.

The engine uses the model in whatever mode it is in; the training loop sets the mode.

Precision: ``autocast`` (e.g. ``torch.bfloat16``) runs each chunk's forward pass and loss under
``torch.autocast``, the parameters staying in their dtype; ``accumulate`` (float32 or float64,
default: the parameters' dtype, float32 for lower precisions) is the dtype in which chunk
gradients and losses are summed, so that float32 chunks can be summed in float64.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from gdlab.engine.calibrate import chunk_choice
from gdlab.engine.chunks import Rows, as_rows, loader_row_count, tensor_rows
from gdlab.optim.losses import LossFn
from gdlab.optim.regularization import penalty

Reduce = Callable[[Sequence[Tensor]], None]
Data = Tensor | DataLoader

ACCUMULATE_DTYPES = (torch.float32, torch.float64)


def chunk_terms(forward: Callable[[Tensor], Tensor], loss_fn: LossFn, rows: Rows, *, n: int | None = None,
                autocast: torch.dtype | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The chunk loop: for each chunk of ``rows``, ``(loss * rows_c / n, out, y_c)`` with ``out =
    forward(X_c)``; ``n`` (default ``rows.n``) is N, the rows of the whole set (over all processes).
    The weighted losses sum to the data term of the objective."""
    n = rows.n if n is None else n
    for Xc, yc in rows:
        with autocast_to(Xc.device, autocast):
            out = forward(Xc)
            loss = loss_fn(out, yc)
        rows_c = Xc.shape[rows.dim]
        yield (loss if rows_c == n else loss * (rows_c / n)), out, yc  # a weight of 1 is exact


def summed(terms: Iterator[tuple[Tensor, Tensor, Tensor]], regularizer: Tensor | float = 0.0) -> Tensor:
    """The objective from :func:`chunk_terms`: the weighted chunk losses summed, plus the
    ``regularizer`` (no tensor operation for a sum of one chunk or a regulariser of 0.0)."""
    total = functools.reduce(operator.add, (loss for loss, _, _ in terms))
    return total if isinstance(regularizer, float) and regularizer == 0.0 else total + regularizer


def correct(out: Tensor, y: Tensor) -> Tensor:
    """Correct predictions among B rows: out (B, C) logits, or (B, K, C) for K stacked copies
    (then one count per copy, (K,)); y (B,) labels. The prediction is the argmax of C logits, or
    logit > 0 (class 1) for one output."""
    if out.dim() == 1:
        out = out.unsqueeze(-1)
    # max().indices is the first maximum, as argmax, and faster (2.5x on (1437, 10) logits, 10-40x on
    # stacked copies' strided (B, K, C) ones; argmax wins by a few us only on tiny batches)
    pred = (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.max(dim=-1).indices
    return (pred == y.reshape(pred.shape[0], *[1] * (pred.dim() - 1)).long()).sum(dim=0)


@dataclass
class GradientResult:
    """Loss values of one full-batch evaluation; the gradient itself is left in ``p.grad``.

    loss = data_loss + reg_loss (the reported objective); num_samples = rows whose gradient was
    computed; num_chunks = forward/backward passes used.
    """

    loss: float
    data_loss: float
    reg_loss: float
    num_samples: int
    num_chunks: int


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def accumulation_dtype(p: Tensor, accumulate: torch.dtype | None = None) -> torch.dtype:
    """The dtype in which ``p``'s chunk gradients are summed: ``accumulate`` when given, else
    ``p``'s own (float32 for lower precisions, too coarse to sum chunks in)."""
    if accumulate is not None:
        if accumulate not in ACCUMULATE_DTYPES:
            raise ValueError(f"accumulate must be torch.float32 or torch.float64, got {accumulate}")
        return accumulate
    return p.dtype if p.dtype in ACCUMULATE_DTYPES else torch.float32


def _accumulation_buffers(params: Sequence[Tensor], accumulate: torch.dtype | None) -> list[Tensor] | None:
    """Zeroed buffers in the accumulation dtype, or None when every parameter accumulates in its
    own dtype (then ``backward`` sums into ``p.grad`` directly, the fast path)."""
    if all(accumulation_dtype(p, accumulate) == p.dtype for p in params):
        return None
    return [torch.zeros_like(p, dtype=accumulation_dtype(p, accumulate)) for p in params]


def _accumulate(loss: Tensor, params: Sequence[Tensor], buffers: list[Tensor] | None) -> None:
    """Add d(loss)/d(params) to p.grad, or to ``buffers`` (in their own dtype) when given."""
    if buffers is None:
        loss.backward()
        return
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for buf, g in zip(buffers, grads):
        if g is not None:
            buf += g.to(buf.dtype)


def _zero_grad(p: Tensor) -> Tensor:
    p.grad = torch.zeros_like(p)
    return p.grad


def full_batch_loss_and_grad(model: nn.Module, loss_fn: LossFn, X: Data, y: Tensor | None = None, *,
                             chunk_size: int | None = None, memory_budget_mb: float | None = None,
                             regularizer: Callable[[], Tensor] | None = None,
                             params: Sequence[Tensor] | None = None, total_rows: int | None = None,
                             reduce: Reduce | None = None, autocast: torch.dtype | None = None,
                             accumulate: torch.dtype | None = None) -> GradientResult:
    """Exact loss and gradient of ``(1/N) sum_i l_i + R`` over all N rows of ``X`` (N, ...).

    The gradient replaces ``p.grad`` of every trainable parameter. ``chunk_size`` rows are
    processed per forward/backward pass; when None it is the fastest size within the memory cap
    of ``memory_budget_mb`` (default 256 MiB), calibrated once per model and machine and cached
    (:func:`gdlab.engine.calibrate.chunk_choice`). ``regularizer`` returns R(theta) as a
    differentiable 0-dim tensor. Forward passes run under ``torch.autocast(dtype=autocast)`` when
    it is given. Gradients and the loss accumulate in ``accumulate`` (float32 or float64); by
    default gradients accumulate in the parameters' dtype when it is float32 or float64, in
    float32 for lower precisions, and the loss in float64.

    ``X`` may instead be a ``torch.utils.data.DataLoader`` of (input, target) batches (``y`` left
    out): its batches are the chunks, streamed one at a time (see :mod:`gdlab.engine.chunks`), so
    memory is bounded by one batch; ``chunk_size`` and ``memory_budget_mb`` then do not apply.

    Across processes, ``X`` holds this rank's rows of a set of ``total_rows`` rows: each chunk is
    weighted by rows / total_rows and ``reduce`` (a sum over ranks, in place) is applied to the
    data gradient and loss before the regulariser is added once.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    buffers = _accumulation_buffers(params, accumulate)
    if chunk_size is None and not isinstance(X, DataLoader):
        chunk_size = chunk_choice(model, loss_fn, X, y, memory_budget_mb=memory_budget_mb,
                                  autocast=autocast).size
    device = params[0].device
    # all rows in one pass, gradients straight into p.grad: the same arithmetic (a chunk weight of
    # 1 is exact) without the chunk machinery, which is most of a small model's step
    one_pass = (buffers is None and reduce is None and autocast is None and isinstance(X, Tensor)
                and y is not None and X.device == device and total_rows in (None, X.shape[0])
                and chunk_size >= X.shape[0])
    rows = None if one_pass else as_rows(X, y, chunk_size, like=params[0])  # refuses bad data first
    for p in params:
        p.grad = None
    reg = None
    if one_pass:
        data_loss = loss_fn(model(X), y)
        reg = regularizer() if regularizer is not None else None
        # one backward pass for the data term and R: their gradients add up in p.grad either way
        (data_loss + reg if reg is not None and reg.requires_grad else data_loss).backward()
        data_loss, n, num_chunks = data_loss.detach(), int(X.shape[0]), 1
    else:
        n = int(total_rows) if total_rows is not None else rows.n
        data_loss = torch.zeros((), dtype=accumulate or torch.float64, device=device)
        num_chunks = 0
        for chunk_loss, _, _ in chunk_terms(model, loss_fn, rows, n=n, autocast=autocast):
            data_loss += chunk_loss.detach().to(data_loss.dtype)
            _accumulate(chunk_loss, params, buffers)
            num_chunks += 1

    if reduce is not None:
        grads = buffers if buffers is not None else [p.grad if p.grad is not None else _zero_grad(p) for p in params]
        reduce([*grads, data_loss])

    reg_loss = 0.0
    if regularizer is not None:
        if reg is None:
            reg = regularizer()
            if reg.requires_grad:
                _accumulate(reg, params, buffers)
        reg_loss = float(reg.detach())

    if buffers is not None:
        for p, buf in zip(params, buffers):
            p.grad = buf.to(p.dtype)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    data = float(data_loss)
    return GradientResult(data + reg_loss, data, reg_loss, num_samples=n, num_chunks=num_chunks)


@torch.no_grad()
def _sums(model: nn.Module, loss_fn: LossFn, X: Data, y: Tensor | None, *, classification: bool,
          chunk_size: int | None, total_rows: int | None, reduce: Reduce | None, autocast: torch.dtype | None,
          accumulate: torch.dtype | None) -> tuple[int, float, int]:
    """N, the mean data loss and the correct predictions (0 unless ``classification``) over all rows."""
    like = next((p for p in model.parameters()), X if isinstance(X, Tensor) else torch.zeros(()))
    accumulation_dtype(like, accumulate)  # refuses a bad accumulate dtype
    rows = as_rows(X, y, chunk_size, like=like)
    n = int(total_rows) if total_rows is not None else rows.n
    total = torch.zeros((), dtype=accumulate or torch.float64, device=like.device)
    hits = torch.zeros((), dtype=torch.float64, device=like.device)
    for loss, out, yc in chunk_terms(model, loss_fn, rows, n=n, autocast=autocast):
        total += loss.to(total.dtype)
        if classification:
            hits += correct(out, yc)
    if reduce is not None:
        reduce([total, hits])
    return n, float(total), int(round(float(hits)))


def full_batch_loss(model: nn.Module, loss_fn: LossFn, X: Data, y: Tensor | None = None, *,
                    chunk_size: int | None = None, regularizer: Callable[[], Tensor] | None = None,
                    total_rows: int | None = None, reduce: Reduce | None = None,
                    autocast: torch.dtype | None = None, accumulate: torch.dtype | None = None) -> float:
    """The objective ``(1/N) sum_i l_i + R`` over all rows of X (or a DataLoader), without
    gradients (across processes: ``total_rows`` and ``reduce``; ``autocast`` and ``accumulate``
    (default float64) as in :func:`full_batch_loss_and_grad`)."""
    _, data, _ = _sums(model, loss_fn, X, y, classification=False, chunk_size=chunk_size, total_rows=total_rows,
                       reduce=reduce, autocast=autocast, accumulate=accumulate)
    with torch.no_grad():
        return data + (float(regularizer()) if regularizer is not None else 0.0)


def evaluate(model: nn.Module, loss_fn: LossFn, X: Data, y: Tensor | None = None, *, classification: bool,
             chunk_size: int | None = None, total_rows: int | None = None, reduce: Reduce | None = None,
             autocast: torch.dtype | None = None,
             accumulate: torch.dtype | None = None) -> tuple[float | None, float | None]:
    """Mean data loss and accuracy (fraction in [0, 1], classification only) over X (N, ...) or
    a DataLoader, by :func:`correct`. Returns (None, None) for an empty set. Across processes,
    ``total_rows`` and ``reduce``; ``autocast`` and ``accumulate`` (default float64) as in
    :func:`full_batch_loss_and_grad`."""
    if isinstance(X, Tensor) and int(total_rows if total_rows is not None else X.shape[0]) == 0:
        return None, None
    n, loss, hits = _sums(model, loss_fn, X, y, classification=classification, chunk_size=chunk_size,
                          total_rows=total_rows, reduce=reduce, autocast=autocast, accumulate=accumulate)
    return loss, (hits / n if classification else None)


def gradient_norm(params: Sequence[Tensor]) -> float:
    """Euclidean norm of the concatenated gradients of ``params`` (missing grads count as 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # one fused norm per tensor in the gradients' own precision, combined in float64 by Python:
    # a small model's step is mostly the overhead of each tensor op (a float64 norm of float32
    # gradients costs twice as much); a result where float32 squares may have left its range
    # (not finite, or so small that they underflow) is computed again in float64, so that it is
    # inf only when a gradient is and a vanishing gradient is not reported as zero
    low = any(g.dtype not in ACCUMULATE_DTYPES for g in grads)  # bfloat16/float16: norms in float32
    norm = math.hypot(*[float(x) for x in torch._foreach_norm(grads, 2, dtype=torch.float32 if low else None)])
    return norm if 1e-10 <= norm < math.inf else math.hypot(
        *[float(x) for x in torch._foreach_norm(grads, 2, dtype=torch.float64)])


@dataclass
class FullBatchObjective:
    """The full-batch training objective of one run: the model, the loss, the training rows ``X``
    (N, ...) and ``y`` (or a DataLoader, ``y`` None), the chunk size, the regulariser, the precision (``autocast``,
    ``accumulate`` as in :func:`full_batch_loss_and_grad`) and, across processes, this rank's
    rows with ``total_rows`` (N over all ranks) and ``reduce`` (the sum over ranks)."""

    model: nn.Module
    loss_fn: LossFn
    X: Tensor
    y: Tensor
    chunk_size: int | None = None
    regularizer: Callable[[], Tensor] | None = None
    params: Sequence[Tensor] | None = None
    autocast: torch.dtype | None = None
    accumulate: torch.dtype | None = None
    total_rows: int | None = None
    reduce: Reduce | None = None

    def __post_init__(self) -> None:
        if self.params is None:  # the trainable parameters, as every gradient function defaults to
            self.params = [p for p in self.model.parameters() if p.requires_grad]

    @property
    def rows(self) -> int:
        """N, the training rows (over all processes)."""
        return self.total_rows or (loader_row_count(self.X) if isinstance(self.X, DataLoader) else int(self.X.shape[0]))

    def loss(self) -> float:
        """L(theta) at the current parameters, without gradients."""
        return full_batch_loss(self.model, self.loss_fn, self.X, self.y, chunk_size=self.chunk_size,
                               regularizer=self.regularizer, total_rows=self.total_rows, reduce=self.reduce,
                               autocast=self.autocast, accumulate=self.accumulate)

    def loss_and_grad(self) -> GradientResult:
        """L(theta) and its gradient (left in ``p.grad``)."""
        return full_batch_loss_and_grad(self.model, self.loss_fn, self.X, self.y, chunk_size=self.chunk_size,
                                        regularizer=self.regularizer, params=self.params, total_rows=self.total_rows,
                                        reduce=self.reduce, autocast=self.autocast, accumulate=self.accumulate)


def batch_dependent_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose training-mode forward pass depends on the batch or on
    randomness (BatchNorm, Dropout): the functional objective cannot hold them fixed."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)]


@dataclass
class FunctionalObjective:
    """The objective as a pure function of the parameters, ``objective(params, X, y) -> L``, for
    ``torch.func`` transforms (grad, vmap) and ``torch.compile``: ``params`` is the list of the
    model's trainable parameters (in ``model.parameters()`` order, same shapes), X (N, ...) and y
    hold all N rows, processed ``chunk_size`` rows at a time. ``l1``/``l2`` penalise the weights
    with ndim >= 2, as :func:`gdlab.optim.regularization.regularization_term` does. The buffers
    are held fixed (steppers that use it refuse models whose forward pass changes them)."""

    model: nn.Module
    loss_fn: LossFn
    chunk_size: int | None = None
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.penalised = [p.dim() >= 2 for _, p in named]
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad}
        self.fixed = {**frozen, **{n: b for n, b in self.model.named_buffers()}}

    def initial(self) -> list[Tensor]:
        """Detached copies of the model's current trainable parameters."""
        named = dict(self.model.named_parameters())
        return [named[n].detach().clone() for n in self.names]

    def regularizer(self, params: Sequence[Tensor]) -> Tensor | float:
        """R(theta) for ``params`` (0 when l1 = l2 = 0)."""
        return penalty([p for p, penalised in zip(params, self.penalised) if penalised], self.l1, self.l2)

    def data_loss(self, params: Sequence[Tensor], X: Tensor, y: Tensor) -> Tensor:
        """(1/N) sum_i l_i over all N rows of X, chunk by chunk."""
        return summed(self._terms(params, X, y))

    def _terms(self, params: Sequence[Tensor], X: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        state = {**self.fixed, **dict(zip(self.names, params))}
        return chunk_terms(lambda Xc: functional_call(self.model, state, (Xc,)), self.loss_fn,
                           tensor_rows(X, y, self.chunk_size))

    def __call__(self, params: Sequence[Tensor], X: Tensor, y: Tensor) -> Tensor:
        return summed(self._terms(params, X, y), self.regularizer(params))

    def load_into_model(self, params: Sequence[Tensor]) -> None:
        """Copy ``params`` into the model's trainable parameters."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, p in zip(self.names, params):
                named[n].copy_(p)

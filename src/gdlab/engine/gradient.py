"""Exact full-dataset loss and gradient by chunked accumulation.

The objective is ``L(theta) = (1/N) * sum_i l(f(x_i; theta), y_i) + R(theta)``. The data term is
accumulated over chunks, each chunk's mean loss weighted by ``chunk_size / N``, so the result is
the same (to float rounding) for every chunk size while memory is bounded by one chunk's
activations. ``R`` is added once, outside the chunk loop.

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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from gdlab.engine.calibrate import ChunkChoice, architecture_signature, choose_chunk_size
from gdlab.engine.chunks import as_rows, spans

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MEMORY_BUDGET_MB = 256.0
_ACCUMULATE_DTYPES = (torch.float32, torch.float64)


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


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def estimate_bytes_per_sample(model: nn.Module, X: torch.Tensor, probe: int = 16) -> int:
    """Estimate the activation memory (bytes) one sample costs in a forward+backward pass.

    Runs one no-grad forward on ``min(probe, N)`` rows and sums the outputs of every leaf module;
    autograd keeps roughly the activations plus their gradients, hence the factor 3.
    """
    n = max(1, min(probe, X.shape[0]))
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        total += _tensor_bytes(output)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the probe must not move BatchNorm running statistics
    try:
        with torch.no_grad():
            model(X[:n])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    input_bytes = X[:1].numel() * X.element_size()
    return max(1, (3 * total) // n + input_bytes)


def auto_chunk_size(
    model: nn.Module,
    X: torch.Tensor,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    bytes_per_sample: int | None = None,
) -> int:
    """Largest chunk (rows) whose estimated activation memory fits in ``memory_budget_mb`` MiB,
    clamped to [1, N]. ``bytes_per_sample``: a known estimate (else measured by a probe)."""
    per_sample = bytes_per_sample or estimate_bytes_per_sample(model, X)
    chunk = int(memory_budget_mb * 2**20) // per_sample
    return int(min(max(chunk, 1), X.shape[0]))


# The probe is a forward pass with hooks, too slow to repeat on every default-chunk call.
_bytes_per_sample: dict[tuple[str, ...], int] = {}


def _cached_bytes_per_sample(model: nn.Module, X: torch.Tensor) -> int:
    """:func:`estimate_bytes_per_sample`, once per architecture, row shape, dtype and device."""
    key = (architecture_signature(model), str(tuple(X.shape[1:])), str(X.dtype), str(X.device))
    if key not in _bytes_per_sample:
        _bytes_per_sample[key] = estimate_bytes_per_sample(model, X)
    return _bytes_per_sample[key]


def chunk_choice(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int | None = None,
    memory_budget_mb: float | None = None,
    autocast: torch.dtype | None = None,
    calibrate: bool = True,
) -> ChunkChoice:
    """The chunk size (rows per pass) for a full-batch gradient over ``X`` (N, ...): ``chunk_size``
    when given, else the fastest power of two within the memory cap of :func:`auto_chunk_size`
    (calibrated and cached by :func:`gdlab.engine.calibrate.choose_chunk_size`), or one chunk of
    N rows when N is small."""
    if chunk_size is not None:
        return ChunkChoice(int(chunk_size), "given")
    if X.shape[0] == 0:
        return ChunkChoice(1, "memory", reason="no rows")
    cap = auto_chunk_size(model, X, memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB,
                          bytes_per_sample=_cached_bytes_per_sample(model, X))
    return choose_chunk_size(model, loss_fn, X, y, max_chunk=cap, autocast=autocast, calibrate=calibrate)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_accumulate(accumulate: torch.dtype | None) -> None:
    if accumulate is not None and accumulate not in _ACCUMULATE_DTYPES:
        raise ValueError(f"accumulate must be torch.float32 or torch.float64, got {accumulate}")


def _accumulation_buffers(
    params: Sequence[torch.Tensor], accumulate: torch.dtype | None
) -> list[torch.Tensor] | None:
    """Zeroed buffers in the accumulation dtype, or None when every parameter accumulates in its
    own dtype (then ``backward`` sums into ``p.grad`` directly, the fast path)."""
    def target(p: torch.Tensor) -> torch.dtype:
        if accumulate is not None:
            return accumulate
        return p.dtype if p.dtype in _ACCUMULATE_DTYPES else torch.float32

    if all(target(p) == p.dtype for p in params):
        return None
    return [torch.zeros_like(p, dtype=target(p)) for p in params]


def _accumulate(
    loss: torch.Tensor, params: Sequence[torch.Tensor], buffers: list[torch.Tensor] | None
) -> None:
    """Add d(loss)/d(params) to p.grad, or to ``buffers`` (in their own dtype) when given."""
    if buffers is None:
        loss.backward()
        return
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for buf, g in zip(buffers, grads):
        if g is not None:
            buf += g.to(buf.dtype)


Reduce = Callable[[Sequence[torch.Tensor]], None]


def _zero_grad(p: torch.Tensor) -> torch.Tensor:
    p.grad = torch.zeros_like(p)
    return p.grad


def full_batch_loss_and_grad(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor | DataLoader,
    y: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    memory_budget_mb: float | None = None,
    regularizer: Callable[[], torch.Tensor] | None = None,
    params: Sequence[torch.Tensor] | None = None,
    total_rows: int | None = None,
    reduce: Reduce | None = None,
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> GradientResult:
    """Exact loss and gradient of ``(1/N) sum_i l_i + R`` over all N rows of ``X`` (N, ...).

    The gradient replaces ``p.grad`` of every trainable parameter. ``chunk_size`` rows are
    processed per forward/backward pass; when None it is the fastest size within the memory cap
    of ``memory_budget_mb`` (default 256 MiB), calibrated once per model and machine and cached
    (:func:`chunk_choice`). ``regularizer`` returns R(theta) as a differentiable 0-dim tensor.
    Forward passes run under ``torch.autocast(dtype=autocast)`` when it is given. Gradients and
    the loss accumulate in ``accumulate`` (float32 or float64); by default gradients accumulate
    in the parameters' dtype when it is float32 or float64, in float32 for lower precisions, and
    the loss in float64.

    ``X`` may instead be a ``torch.utils.data.DataLoader`` of (input, target) batches (``y`` left
    out): its batches are the chunks, streamed one at a time (see :mod:`gdlab.engine.chunks`), so
    memory is bounded by one batch; ``chunk_size`` and ``memory_budget_mb`` then do not apply.

    Across processes, ``X`` holds this rank's rows of a set of ``total_rows`` rows: each chunk is
    weighted by rows / total_rows and ``reduce`` (a sum over ranks, in place) is applied to the
    data gradient and loss before the regulariser is added once.
    """
    _check_accumulate(accumulate)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    if chunk_size is None and not isinstance(X, DataLoader):
        chunk_size = chunk_choice(model, loss_fn, X, y, memory_budget_mb=memory_budget_mb,
                                  autocast=autocast).size
    device = params[0].device
    buffers = _accumulation_buffers(params, accumulate)
    # all rows in one pass, gradients straight into p.grad: the same arithmetic (a chunk weight of
    # 1 is exact) without the chunk machinery, which is most of a small model's step
    one_pass = (buffers is None and reduce is None and autocast is None and isinstance(X, torch.Tensor)
                and y is not None and X.device == device and total_rows in (None, X.shape[0])
                and chunk_size >= X.shape[0])
    rows = None if one_pass else as_rows(X, y, chunk_size, like=params[0])  # refuses bad data first
    for p in params:
        p.grad = None
    if one_pass:
        data_loss = loss_fn(model(X), y)
        data_loss.backward()
        data_loss, n, num_chunks = data_loss.detach(), int(X.shape[0]), 1
    else:
        n = int(total_rows) if total_rows is not None else rows.n
        data_loss = torch.zeros((), dtype=accumulate or torch.float64, device=device)
        num_chunks = 0
        for Xc, yc in rows:
            with _autocast(device, autocast):
                chunk_loss = loss_fn(model(Xc), yc) * (Xc.shape[0] / n)
            data_loss += chunk_loss.detach().to(data_loss.dtype)
            _accumulate(chunk_loss, params, buffers)
            num_chunks += 1

    if reduce is not None:
        grads = buffers if buffers is not None else [
            p.grad if p.grad is not None else _zero_grad(p) for p in params
        ]
        reduce([*grads, data_loss])

    reg_loss = 0.0
    if regularizer is not None:
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
    return GradientResult(
        loss=data + reg_loss, data_loss=data, reg_loss=reg_loss, num_samples=n, num_chunks=num_chunks
    )


@torch.no_grad()
def full_batch_loss(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int | None = None,
    regularizer: Callable[[], torch.Tensor] | None = None,
    total_rows: int | None = None,
    reduce: Reduce | None = None,
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> float:
    """The objective ``(1/N) sum_i l_i + R`` over all rows of X, without gradients (across
    processes: ``total_rows`` and ``reduce``; ``autocast`` and ``accumulate`` (default float64)
    as in :func:`full_batch_loss_and_grad`)."""
    _check_accumulate(accumulate)
    n_local = int(X.shape[0])
    n = int(total_rows) if total_rows is not None else n_local
    total = torch.zeros((), dtype=accumulate or torch.float64, device=X.device)
    for start, stop in spans(n_local, chunk_size):
        with _autocast(X.device, autocast):
            loss = loss_fn(model(X[start:stop]), y[start:stop])
        total += loss.to(total.dtype) * ((stop - start) / n)
    if reduce is not None:
        reduce([total])
    reg = float(regularizer()) if regularizer is not None else 0.0
    return float(total) + reg


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    classification: bool,
    chunk_size: int | None = None,
    total_rows: int | None = None,
    reduce: Reduce | None = None,
    autocast: torch.dtype | None = None,
    accumulate: torch.dtype | None = None,
) -> tuple[float | None, float | None]:
    """Mean data loss and accuracy (fraction in [0, 1], classification only) over X (N, ...).

    Returns (None, None) for an empty set. Binary models with one output count a logit > 0 as
    class 1. Across processes, ``total_rows`` and ``reduce``; ``autocast`` and ``accumulate``
    (default float64) as in :func:`full_batch_loss_and_grad`.
    """
    _check_accumulate(accumulate)
    n_local = int(X.shape[0])
    n = int(total_rows) if total_rows is not None else n_local
    if n == 0:
        return None, None
    total = torch.zeros((), dtype=accumulate or torch.float64, device=X.device)
    correct = 0
    for start, stop in spans(n_local, chunk_size):
        yc = y[start:stop]
        with _autocast(X.device, autocast):
            out = model(X[start:stop])
            loss = loss_fn(out, yc)
        total += loss.to(total.dtype) * ((stop - start) / n)
        if classification:
            if out.dim() == 1 or out.shape[-1] == 1:
                pred = (out.reshape(-1) > 0).long()
            else:
                pred = out.argmax(dim=-1)
            correct += int((pred == yc.reshape(-1).long()).sum())
    if reduce is not None:
        counts = torch.tensor([float(correct)], dtype=torch.float64, device=X.device)
        reduce([total, counts])
        correct = int(round(float(counts)))
    return float(total), (correct / n if classification else None)


def gradient_norm(params: Sequence[torch.Tensor]) -> float:
    """Euclidean norm of the concatenated gradients of ``params`` (missing grads count as 0)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # one fused norm per tensor in float64, combined in Python: a small model's step is mostly
    # the overhead of each extra tensor op
    return math.hypot(*[float(x) for x in torch._foreach_norm(grads, 2, dtype=torch.float64)])


@dataclass
class FullBatchObjective:
    """The full-batch training objective of one run: the model, the loss, the training rows ``X``
    (N, ...) and ``y``, the chunk size, the regulariser, the precision (``autocast``,
    ``accumulate`` as in :func:`full_batch_loss_and_grad`) and, across processes, this rank's
    rows with ``total_rows`` (N over all ranks) and ``reduce`` (the sum over ranks)."""

    model: nn.Module
    loss_fn: LossFn
    X: torch.Tensor
    y: torch.Tensor
    chunk_size: int | None = None
    regularizer: Callable[[], torch.Tensor] | None = None
    params: Sequence[torch.Tensor] | None = None
    autocast: torch.dtype | None = None
    accumulate: torch.dtype | None = None
    total_rows: int | None = None
    reduce: Reduce | None = None

    def __post_init__(self) -> None:
        if self.params is None:  # the trainable parameters, as every gradient function defaults to
            self.params = [p for p in self.model.parameters() if p.requires_grad]

    def loss(self) -> float:
        """L(theta) at the current parameters, without gradients."""
        return full_batch_loss(
            self.model, self.loss_fn, self.X, self.y, chunk_size=self.chunk_size,
            regularizer=self.regularizer, total_rows=self.total_rows, reduce=self.reduce,
            autocast=self.autocast, accumulate=self.accumulate,
        )

    def loss_and_grad(self) -> GradientResult:
        """L(theta) and its gradient (left in ``p.grad``)."""
        return full_batch_loss_and_grad(
            self.model, self.loss_fn, self.X, self.y, chunk_size=self.chunk_size,
            regularizer=self.regularizer, params=self.params, total_rows=self.total_rows,
            reduce=self.reduce, autocast=self.autocast, accumulate=self.accumulate,
        )

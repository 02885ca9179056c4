"""Hessian-vector products of the full-batch objective and its top eigenvalues (sharpness).

The Hessian is that of ``L(theta) = (1/N) * sum_i l(f(x_i; theta), y_i) + R(theta)``, the objective the engine
differentiates (:mod:`gdlab.engine.gradient`). Products are exact for any chunk size: each chunk's mean loss
is weighted by ``chunk_rows / N`` and differentiated twice (double backward), the chunk products are summed,
and the product with ``R``'s Hessian is added once. Memory is bounded by one chunk's double-backward graph.

The Hessian is that of the model in the mode the caller set. With ``model.eval()`` it is a deterministic
function of theta. In training mode BatchNorm normalises each chunk with that chunk's statistics (the Hessian
then depends on the chunk size, exactly as the engine's gradient does) and Dropout draws fresh masks on every
product, which makes the "Hessian" random and iterative eigensolvers meaningless: evaluate sharpness in eval
mode when the model has Dropout. BatchNorm running statistics are restored after every product, so a
diagnostic never moves them.

cuDNN's fused RNN kernels have no double backward, so on CUDA every product runs with cuDNN
disabled (native kernels; slower for LSTM/GRU, identical results). CPU needs nothing special.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gdlab.engine.calibrate import DEFAULT_MEMORY_BUDGET_MB, auto_chunk_size
from gdlab.engine.chunks import Rows, as_rows
from gdlab.engine.objective import LossFn, accumulation_dtype, chunk_terms
from gdlab.errors import GdlabError, unknown_name

Regularizer = Callable[[], torch.Tensor]

SHARPNESS_METHODS: dict[str, str] = {
    "lanczos": "Lanczos with full reorthogonalisation: top algebraic eigenvalue",
    "power": "power iteration: eigenvalue of largest magnitude, with its sign",
}


def default_hvp_chunk_size(model: nn.Module, X: torch.Tensor) -> int:
    """Rows per double-backward pass when none is given: the engine's automatic chunk size for
    half its default memory budget, since double backward keeps about twice the activations."""
    return auto_chunk_size(model, X, DEFAULT_MEMORY_BUDGET_MB / 2)


def _hvp_rows(model: nn.Module, X: torch.Tensor | DataLoader, y: torch.Tensor | None, chunk_size: int | None,
              params: Sequence[torch.Tensor]) -> Rows:
    """The chunks a product iterates: tensors in ``chunk_size`` rows (default
    :func:`default_hvp_chunk_size`), or a DataLoader's batches."""
    if chunk_size is None and not isinstance(X, DataLoader):
        chunk_size = default_hvp_chunk_size(model, X)
    return as_rows(X, y, chunk_size, like=params[0])


class LinearOperator(Protocol):
    """A symmetric linear map on flat float64 vectors of length ``dim``; ``device`` is optional."""

    dim: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def trainable_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The parameters that make up theta: those of ``model`` with requires_grad."""
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (BatchNorm running statistics, ...) on exit. A diagnostic's forward
    passes in training mode would otherwise move the running statistics."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _no_cudnn_on_cuda(params: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    return torch.backends.cudnn.flags(enabled=False) if any(p.is_cuda for p in params) else contextlib.nullcontext()


def check_like_params(name: str, tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                      hint: str = "") -> None:
    """GdlabError unless ``tensors`` holds one tensor shaped like each parameter."""
    fix = f"pass one tensor shaped like each parameter{hint}"
    if len(tensors) != len(params):
        raise GdlabError(f"{name} has {len(tensors)} tensors but there are {len(params)} parameters; {fix}")
    for i, (t, p) in enumerate(zip(tensors, params)):
        if tuple(t.shape) != tuple(p.shape):
            raise GdlabError(f"{name}[{i}] has shape {tuple(t.shape)} but parameter {i} has shape "
                             f"{tuple(p.shape)}; {fix}")


def _second_derivative(scalar: torch.Tensor, params: Sequence[torch.Tensor],
                       vec: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """d/dtheta <d scalar/dtheta, vec>, None where it is identically zero."""
    grads = torch.autograd.grad(scalar, params, create_graph=True, allow_unused=True)
    pairs = [(g, v) for g, v in zip(grads, vec) if g is not None and g.requires_grad]
    if not pairs:
        return [None] * len(params)
    outputs, grad_outputs = zip(*pairs)
    # grad of <g, v> is the vector-Jacobian product of g with v; no dot-product graph needed.
    return list(torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, allow_unused=True))


def hvp(model: nn.Module, loss_fn: LossFn, X: torch.Tensor | DataLoader, y: torch.Tensor | None,
        vec: Sequence[torch.Tensor], *, params: Sequence[torch.Tensor] | None = None,
        chunk_size: int | None = None, regularizer: Regularizer | None = None) -> list[torch.Tensor]:
    """Hessian of the full-batch objective ``(1/N) sum_i l_i + R`` at the current theta, times vec.

    X: (N, ...) inputs, y: (N, ...) targets; ``vec``: one tensor shaped like each of ``params`` (default: the
    model's trainable parameters). Returns ``H @ vec`` as one tensor per parameter, in that parameter's dtype
    (float32 for lower precisions, too coarse to sum chunks in). ``chunk_size`` rows go through each
    double-backward pass (None: :func:`default_hvp_chunk_size`); the result does not depend on it in eval
    mode. ``regularizer`` returns R(theta) as a differentiable 0-dim tensor. Does not touch ``p.grad``, the
    parameters, the model's train/eval mode or its buffers. Raises GdlabError when ``vec`` does not match
    ``params``. ``X`` may be a DataLoader (``y`` None): its batches are the chunks.
    """
    params = trainable_parameters(model) if params is None else list(params)
    check_like_params("hvp: vec", vec, params)
    return _hvp(model, loss_fn, _hvp_rows(model, X, y, chunk_size, params), vec, params, regularizer)


def _hvp(model: nn.Module, loss_fn: LossFn, rows: Rows, vec: Sequence[torch.Tensor],
         params: Sequence[torch.Tensor], regularizer: Regularizer | None) -> list[torch.Tensor]:
    vec = [v.detach().to(device=p.device, dtype=p.dtype) for v, p in zip(vec, params)]
    total: list[torch.Tensor | None] = [None] * len(params)

    def add(parts: list[torch.Tensor | None]) -> None:
        for i, (p, part) in enumerate(zip(params, parts)):
            if part is not None:
                part = part.detach().to(accumulation_dtype(p))
                total[i] = part if total[i] is None else total[i] + part

    with preserved_buffers(model), _no_cudnn_on_cuda(params), torch.enable_grad():
        for chunk_loss, _, _ in chunk_terms(model, loss_fn, rows):
            add(_second_derivative(chunk_loss, params, vec))
        if regularizer is not None:
            reg = regularizer()
            if reg.requires_grad:
                add(_second_derivative(reg, params, vec))
    return [torch.zeros(p.shape, dtype=accumulation_dtype(p), device=p.device) if t is None else t
            for p, t in zip(params, total)]


class HessianOperator:
    """The full-batch Hessian of ``(1/N) sum_i l_i + R`` as a linear map on flat vectors.

    ``matvec`` takes and returns float64 vectors of length ``dim`` (the number of scalars in ``params``,
    default the model's trainable parameters, concatenated in order) on the parameters' device. Products are
    computed in the parameters' dtype by :func:`hvp` at the parameters' values at call time. ``num_hvps``
    counts the products made so far. ``X`` may be a DataLoader (``y`` None), streamed once per product.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, X: torch.Tensor | DataLoader,
                 y: torch.Tensor | None = None, *, params: Sequence[torch.Tensor] | None = None,
                 chunk_size: int | None = None, regularizer: Regularizer | None = None) -> None:
        self.model, self.loss_fn, self.X, self.y = model, loss_fn, X, y
        self.params = trainable_parameters(model) if params is None else list(params)
        if not self.params:
            raise GdlabError("Hessian: the model has no trainable parameters; nothing to differentiate")
        self.regularizer = regularizer
        self._rows = _hvp_rows(model, X, y, chunk_size, self.params)
        self.dim: int = sum(p.numel() for p in self.params)
        self.device: torch.device = self.params[0].device
        self.num_hvps: int = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v for a flat vector v: (dim,); returns (dim,) float64 on the parameters' device."""
        if v.dim() != 1 or v.numel() != self.dim:
            raise GdlabError(f"Hessian matvec: expected a flat vector of length {self.dim}, got shape "
                             f"{tuple(v.shape)}")
        parts = torch.split(v, [p.numel() for p in self.params])
        pieces = [part.reshape(p.shape) for part, p in zip(parts, self.params)]
        out = _hvp(self.model, self.loss_fn, self._rows, pieces, self.params, self.regularizer)
        self.num_hvps += 1
        return torch.cat([t.reshape(-1) for t in out]).to(torch.float64)


def _device(op: LinearOperator) -> torch.device:
    return getattr(op, "device", torch.device("cpu"))


def _start_vector(op: LinearOperator, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(op.dim, generator=gen, dtype=torch.float64).to(_device(op))
    return v / v.norm()


def dense_hessian(op: LinearOperator) -> torch.Tensor:
    """The (dim, dim) float64 matrix whose column j is ``op.matvec(e_j)``; dim products. Meant for small
    models and tests; it is symmetric up to float rounding."""
    eye = torch.eye(op.dim, dtype=torch.float64, device=_device(op))
    return torch.stack([op.matvec(eye[j]) for j in range(op.dim)], dim=1)


@dataclass
class EigenResult:
    """Eigenvalue estimates of an operator. values: estimates in descending order; vectors: the matching flat
    unit-norm float64 vectors (dim,); hvps: operator products used; converged: whether the stopping rule was
    met (see the solver); history: the top (first) estimate after each iteration."""

    values: list[float]
    vectors: list[torch.Tensor]
    hvps: int
    converged: bool
    history: list[float] = field(default_factory=list)


def _relative_change(new: float, old: float) -> float:
    scale = max(abs(new), abs(old))
    return 0.0 if scale == 0.0 else abs(new - old) / scale


def power_iteration(op: LinearOperator, *, iters: int = 100, tol: float = 1e-6, seed: int = 0) -> EigenResult:
    """Dominant eigenvalue of ``op``: the one of largest magnitude, returned with its sign.

    Runs at most ``iters`` products from a seeded Gaussian start (a local generator) and stops when the
    Rayleigh quotient changes by less than ``tol`` relatively between iterations (``converged`` True). The
    returned value is the Rayleigh quotient of the returned vector. For the top (most positive) eigenvalue of
    an indefinite Hessian use :func:`lanczos`; power iteration gives it only when it also has the largest
    magnitude (convex losses, most trained nets). Convergence is geometric in |lambda_2 / lambda_1|.
    """
    iters = int(iters)
    if iters < 1:
        raise GdlabError(f"power_iteration: iters must be >= 1, got {iters}")
    if op.dim < 1:
        raise GdlabError("power_iteration: the operator has dimension 0; nothing to estimate")
    v = _start_vector(op, seed)
    history: list[float] = []
    converged = False
    for i in range(int(iters)):
        w = op.matvec(v)
        history.append(float(v @ w))
        norm = float(w.norm())
        # norm 0: v is in the null space, an eigenvalue 0 and nothing larger seen
        if norm == 0.0 or (i > 0 and _relative_change(history[-1], history[-2]) < tol):
            converged = True
            break
        if i + 1 < iters:
            v = w / norm
    return EigenResult(values=[history[-1]], vectors=[v], hvps=len(history), converged=converged,
                       history=history)


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the Lanczos tridiagonal matrix."""
    m = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        off = np.asarray(betas[: m - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


def lanczos(op: LinearOperator, *, k: int = 1, iters: int = 30, tol: float | None = None,
            seed: int = 0) -> EigenResult:
    """The ``k`` largest (algebraic) eigenvalues of the symmetric ``op`` and their vectors.

    Lanczos from a seeded Gaussian start (local generator) with full reorthogonalisation (two Gram-Schmidt
    passes) in float64; ``iters`` is the maximum number of products, capped at ``op.dim``. It stores the
    Krylov basis: iters * dim float64 numbers. With ``tol`` it stops early once each of the top-k Ritz values
    changed by less than ``tol`` relatively in the last iteration. ``converged`` is True when that rule fired,
    when the Krylov space became invariant (the values are then exact), or when the residual bound
    ``||H u - theta u||`` of each of the top k Ritz pairs is below ``tol`` (1e-6 when None) times the largest
    |Ritz value|. A product that is not finite (a diverged model) ends the run with NaN values and
    ``converged`` False. If the Krylov space closes after fewer than k steps (H a multiple of the identity on
    it), fewer than k values are returned. Raises GdlabError for k < 1, iters < k or k > dim.
    """
    k, iters = int(k), int(iters)
    if k < 1:
        raise GdlabError(f"lanczos: k must be >= 1, got {k}")
    if iters < k:
        raise GdlabError(f"lanczos: iters must be >= k ({k}), got {iters}; raise iters")
    if k > op.dim:
        raise GdlabError(f"lanczos: k={k} exceeds the operator dimension {op.dim}")
    m_max = min(iters, op.dim)
    basis = torch.zeros((m_max, op.dim), dtype=torch.float64, device=_device(op))
    basis[0] = _start_vector(op, seed)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    previous: np.ndarray | None = None
    converged = False
    theta = s = np.zeros(0)
    for j in range(m_max):
        q = basis[j]
        w = op.matvec(q)
        alpha = float(q @ w)
        alphas.append(alpha)
        w = w - alpha * q
        if j > 0:
            w = w - betas[j - 1] * basis[j - 1]
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        betas.append(beta)
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            nan = torch.full((op.dim,), math.nan, dtype=torch.float64, device=basis.device)
            return EigenResult(values=[math.nan] * k, vectors=[nan.clone() for _ in range(k)],
                               hvps=j + 1, converged=False, history=[*history, math.nan])
        theta, s = _ritz(alphas, betas)
        history.append(float(theta[-1]))
        top = theta[::-1][:k]
        if tol is not None and previous is not None and len(top) == k and len(previous) == k:
            if all(_relative_change(a, b) < tol for a, b in zip(top, previous)):
                converged = True
                break
        previous = top
        scale = max(abs(theta[0]), abs(theta[-1]), np.finfo(np.float64).tiny)
        if beta <= 1e-12 * scale:
            converged = True  # invariant Krylov subspace: the Ritz values are eigenvalues
            break
        if j + 1 < m_max:
            basis[j + 1] = w / beta
    m = len(alphas)
    order = np.argsort(theta)[::-1][:k]
    if not converged:
        scale = max(abs(theta[0]), abs(theta[-1]))
        residuals = np.abs(betas[-1] * s[m - 1, order])
        converged = bool(np.all(residuals <= (1e-6 if tol is None else tol) * scale))
    coeffs = torch.as_tensor(s[:, order].copy(), dtype=torch.float64, device=basis.device)
    vectors = basis[:m].T @ coeffs
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    return EigenResult(values=[float(theta[i]) for i in order],
                       vectors=[vectors[:, i].clone() for i in range(vectors.shape[1])],
                       hvps=m, converged=converged, history=history)


@dataclass
class TraceResult:
    """Hutchinson trace estimate: estimate (mean of z^T H z), stderr (its standard error), hvps."""

    estimate: float
    stderr: float
    hvps: int


def hutchinson_trace(op: LinearOperator, *, samples: int = 50, seed: int = 0) -> TraceResult:
    """Unbiased estimate of trace(H) from ``samples`` Rademacher probes z: mean of z^T H z. The probes come
    from a local generator seeded with ``seed``. ``stderr`` is the sample standard deviation over
    sqrt(samples) (NaN for one sample). Raises GdlabError for samples < 1."""
    samples = int(samples)
    if samples < 1:
        raise GdlabError(f"hutchinson_trace: samples must be >= 1, got {samples}")
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(_device(op), torch.float64)
        values.append(float(z @ op.matvec(z)))
    arr = np.asarray(values)
    stderr = float(arr.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    return TraceResult(estimate=float(arr.mean()), stderr=stderr, hvps=samples)


def sharpness(
    model: nn.Module, loss_fn: LossFn, X: torch.Tensor | DataLoader, y: torch.Tensor | None = None, *,
    method: str = "lanczos", iters: int = 30, tol: float | None = 1e-4, chunk_size: int | None = None,
    regularizer: Regularizer | None = None, params: Sequence[torch.Tensor] | None = None, seed: int = 0,
) -> EigenResult:
    """Sharpness: the top Hessian eigenvalue of the full-batch objective at the current theta.

    ``method`` "lanczos" (top algebraic eigenvalue, :func:`lanczos` with k=1) or "power" (largest-magnitude
    eigenvalue, :func:`power_iteration`); at most ``iters`` Hessian-vector products, stopping early when the
    estimate changes by less than ``tol`` relatively (None: run all ``iters`` with Lanczos; power iteration
    then uses 0). Units: loss per parameter unit squared; GD with constant step lr on a quadratic is stable
    iff lr < 2 / sharpness. ``X`` may be a DataLoader of (input, target) batches (``y`` None).
    """
    if method not in SHARPNESS_METHODS:
        raise unknown_name("sharpness method", method, SHARPNESS_METHODS)
    op = HessianOperator(model, loss_fn, X, y, params=params, chunk_size=chunk_size, regularizer=regularizer)
    if method == "power":
        return power_iteration(op, iters=iters, tol=0.0 if tol is None else tol, seed=seed)
    return lanczos(op, k=1, iters=iters, tol=tol, seed=seed)

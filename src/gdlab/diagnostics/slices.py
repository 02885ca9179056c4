"""One- and two-dimensional slices of the full-batch objective around the current parameters.

Data for loss-landscape plots: ``L(theta + a d)`` along a direction and ``L(theta + a d1 + b d2)``
on a plane, with directions from the gradient, a Lanczos eigenvector, or the filter-normalised
random directions of Li et al. (2018, "Visualizing the Loss Landscape of Neural Nets"). Every
function leaves the parameters bit-identical, and ``p.grad``, the train/eval mode and the
buffers (BatchNorm running statistics) as it found them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from gdlab.diagnostics.hessian import (LossFn, Regularizer, check_like_params, preserved_buffers,
                                       trainable_parameters)
from gdlab.engine.calibrate import auto_chunk_size
from gdlab.engine.objective import full_batch_loss, full_batch_loss_and_grad
from gdlab.errors import GdlabError

Direction = Sequence[torch.Tensor]
_DIRECTION_HINT = " (see direction_from_flat)"


def _params(model: nn.Module, params: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    params = trainable_parameters(model) if params is None else list(params)
    if not params:
        raise GdlabError("loss slice: the model has no trainable parameters; nothing to move")
    return params


@contextlib.contextmanager
def _restored(model: nn.Module, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Put back the parameters' values, their ``.grad`` tensors and the model's buffers on exit."""
    values = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    try:
        with preserved_buffers(model):
            yield
    finally:
        with torch.no_grad():
            for p, value, grad in zip(params, values, grads):
                p.copy_(value)
                p.grad = grad


def gradient_direction(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *,
                       chunk_size: int | None = None, regularizer: Regularizer | None = None,
                       params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The unit steepest-descent direction ``-g / ||g||`` of the full-batch objective.

    g is the exact gradient of ``(1/N) sum_i l_i + R`` over X (N, ...) by
    :func:`gdlab.engine.full_batch_loss_and_grad`; ||g|| is the Euclidean norm over all of
    ``params`` (default: the trainable parameters). Returns one tensor shaped like each
    parameter. Raises GdlabError when the gradient is zero (the direction is undefined).
    """
    params = _params(model, params)
    with _restored(model, params):
        full_batch_loss_and_grad(model, loss_fn, X, y, chunk_size=chunk_size, regularizer=regularizer,
                                 params=params)
        grads = [p.grad.detach().clone() for p in params]
    norm = math.sqrt(sum(float(g.to(torch.float64).square().sum()) for g in grads))
    if norm == 0.0 or not math.isfinite(norm):
        raise GdlabError(f"gradient_direction: the gradient norm is {norm}, so there is no descent "
                         "direction; use filter_normalized_direction or a Lanczos eigenvector instead")
    return [-g / norm for g in grads]


def filter_normalized_direction(model: nn.Module, *, seed: int = 0,
                                params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """A filter-normalised Gaussian direction (Li et al. 2018), one tensor shaped like each param.

    For a parameter with ndim >= 2 (conv filters, linear rows, recurrent gate rows) the direction is standard
    normal, then each slice along dim 0 is rescaled to the Euclidean norm of the same slice of the parameter;
    1-D parameters (biases, normalisation scales and shifts) get zeros. Drawn in float64 from a local
    generator seeded with ``seed``, then cast to each parameter's dtype and device.
    """
    params = _params(model, params)
    gen = torch.Generator().manual_seed(int(seed))
    direction = []
    for p in params:
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        weight = p.detach().to(device="cpu", dtype=torch.float64)
        target = weight.reshape(p.shape[0], -1).norm(dim=1)
        current = d.reshape(p.shape[0], -1).norm(dim=1)
        scale = (target / current.clamp_min(1e-300)).reshape(-1, *([1] * (p.dim() - 1)))
        direction.append((d * scale).to(device=p.device, dtype=p.dtype))
    return direction


def direction_from_flat(vec: torch.Tensor, params: Sequence[torch.Tensor] | nn.Module) -> list[torch.Tensor]:
    """Split a flat vector (dim,) into tensors shaped like ``params`` (a model: its trainable ones). For
    example an eigenvector from :func:`gdlab.diagnostics.lanczos`. Each piece is cast to its parameter's dtype
    and device. Raises GdlabError when the length is not the parameter count."""
    if isinstance(params, nn.Module):
        params = trainable_parameters(params)
    sizes = [p.numel() for p in params]
    if vec.dim() != 1 or vec.numel() != sum(sizes):
        raise GdlabError(f"direction_from_flat: expected a flat vector of length {sum(sizes)} (the "
                         f"parameter count), got shape {tuple(vec.shape)}")
    return [piece.reshape(p.shape).to(device=p.device, dtype=p.dtype).clone()
            for piece, p in zip(torch.split(vec, sizes), params)]


def _losses_at(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
               params: Sequence[torch.Tensor], points: Sequence[Sequence[tuple[float, Direction]]],
               chunk_size: int | None, regularizer: Regularizer | None) -> list[float]:
    """The objective at theta + sum(c * d) for each point, a list of (coefficient, direction)."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(model, X)
    losses = []
    with _restored(model, params):
        origin = [p.detach().clone() for p in params]
        for point in points:
            with torch.no_grad():
                for p, p0 in zip(params, origin):
                    p.copy_(p0)
                for coeff, direction in point:
                    for p, d in zip(params, direction):
                        p.add_(d.to(device=p.device, dtype=p.dtype), alpha=float(coeff))
            losses.append(full_batch_loss(model, loss_fn, X, y, chunk_size=chunk_size,
                                          regularizer=regularizer))
    return losses


def loss_along_direction(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
                         direction: Direction, alphas: Sequence[float], *, chunk_size: int | None = None,
                         regularizer: Regularizer | None = None,
                         params: Sequence[torch.Tensor] | None = None) -> list[float]:
    """The full-batch objective ``L(theta + a * d)`` for each a in ``alphas`` (d = ``direction``).
    ``direction``: one tensor shaped like each of ``params`` (default: the trainable parameters); a is in
    units of d, so with a unit direction it is the Euclidean step length. Values that are not finite are
    returned as they are (inf, nan)."""
    params = _params(model, params)
    check_like_params("direction", direction, params, _DIRECTION_HINT)
    points = [[(a, direction)] for a in alphas]
    return _losses_at(model, loss_fn, X, y, params, points, chunk_size, regularizer)


def loss_plane(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, d1: Direction,
               d2: Direction, alphas: Sequence[float], betas: Sequence[float], *,
               chunk_size: int | None = None, regularizer: Regularizer | None = None,
               params: Sequence[torch.Tensor] | None = None) -> np.ndarray:
    """The objective ``L(theta + a d1 + b d2)`` on a grid: float64 array (len(alphas), len(betas)).
    Entry [i, j] uses a = alphas[i], b = betas[j]; ``d1`` and ``d2`` are shaped like ``params``."""
    params = _params(model, params)
    check_like_params("d1", d1, params, _DIRECTION_HINT)
    check_like_params("d2", d2, params, _DIRECTION_HINT)
    points = [[(a, d1), (b, d2)] for a in alphas for b in betas]
    losses = _losses_at(model, loss_fn, X, y, params, points, chunk_size, regularizer)
    return np.asarray(losses, dtype=np.float64).reshape(len(alphas), len(betas))

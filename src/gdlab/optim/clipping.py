"""Gradient clipping by value and by global 2-norm, on the gradients already in ``p.grad``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Real

import torch

from gdlab.errors import GdlabError


@dataclass(frozen=True)
class ClipResult:
    """What clipping did: global gradient 2-norms before and after (float64), whether any
    gradient changed, and ``factor = norm_after / norm_before`` (1.0 when nothing changed)."""

    norm_before: float
    norm_after: float
    clipped: bool
    factor: float


def _global_norm(grads: list[torch.Tensor]) -> float:
    # One host sync per device rather than one per tensor.
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(torch.linalg.vector_norm(g, dtype=torch.float64) ** 2)
    return math.sqrt(sum(float(torch.stack(squares).sum()) for squares in by_device.values()))


def _check_positive(value: float | None, name: str) -> None:
    if value is None:
        return
    if not (isinstance(value, Real) and not isinstance(value, bool) and value > 0):
        raise GdlabError(f"{name} must be a number > 0 (or unset for no clipping), got {value!r}")


def clip_gradients(
    params: Iterable[torch.Tensor], *, max_norm: float | None = None, max_value: float | None = None
) -> ClipResult:
    """Clip the gradients of ``params`` in place, jointly over all of them.

    First each element is clamped to [-max_value, max_value] (``clip_grad_value_``), then, if the
    global 2-norm of all gradients is above ``max_norm``, every gradient is scaled by
    ``max_norm / norm`` (``clip_grad_norm_``), which keeps the direction. Both None: no change.
    Parameters without a gradient are skipped. A non-finite global norm is left alone by the norm
    step (scaling cannot repair it; the non-finite guard handles such a step); value clipping still
    clamps infinities.
    """
    _check_positive(max_norm, "max_norm")
    _check_positive(max_value, "max_value")
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    norm_before = _global_norm(grads)
    clipped = False
    if max_value is not None and with_grad:
        clipped = any(bool((g.abs() > max_value).any()) for g in grads)
        torch.nn.utils.clip_grad_value_(with_grad, clip_value=float(max_value))
    norm_mid = _global_norm(grads) if clipped else norm_before
    # Scale only above max_norm: torch's own rule (max_norm / (norm + 1e-6), capped at 1) would
    # also shrink norms just below max_norm by a hair.
    if max_norm is not None and math.isfinite(norm_mid) and norm_mid > max_norm:
        torch.nn.utils.clip_grad_norm_(with_grad, max_norm=float(max_norm))
        clipped = True
    norm_after = _global_norm(grads) if clipped else norm_before
    factor = norm_after / norm_before if clipped else 1.0
    return ClipResult(norm_before=norm_before, norm_after=norm_after, clipped=clipped, factor=factor)

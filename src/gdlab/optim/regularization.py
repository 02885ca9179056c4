"""Explicit L1/L2 regularizers: terms of the reported objective, not optimizer weight decay."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from numbers import Real

import torch
from torch import nn

from gdlab.errors import GdlabError


def regularized_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs the regularizer penalises: trainable weights with ndim >= 2.

    Linear/conv/recurrent weight matrices and embeddings are penalised; biases and the
    scales/shifts of normalisation layers (1-D tensors) are not, as scikit-learn leaves the
    intercept unpenalised. Frozen parameters (requires_grad False) are not part of theta.
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


def _check_strength(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
        raise GdlabError(f"{field} must be a finite number >= 0, got {value!r}")
    return float(value)


def regularization_term(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """R(theta) = l1 * sum|w| + (l2 / 2) * sum w^2 over :func:`regularized_parameters`.

    Returns a differentiable 0-dim tensor in the parameters' dtype (float32 when they are of a
    lower precision, which is too coarse to accumulate a sum in), on their device; a constant
    0 when l1 == l2 == 0 or nothing is penalised. Its gradient is l1*sign(w) + l2*w on the
    penalised weights and 0 elsewhere.
    """
    l1 = _check_strength("l1", l1)
    l2 = _check_strength("l2", l2)
    weights = [p for _, p in regularized_parameters(model)]
    reference = weights[0] if weights else next(model.parameters(), None)
    dtype = torch.get_default_dtype() if reference is None else reference.dtype
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    device = None if reference is None else reference.device
    total = torch.zeros((), dtype=dtype, device=device)
    if not weights or (l1 == 0.0 and l2 == 0.0):
        return total
    return total + penalty([w.to(dtype) for w in weights], l1, l2)


def make_regularizer(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> Callable[[], torch.Tensor] | None:
    """:func:`regularization_term` of ``model`` as a closure for the engine, with the strengths
    checked and the penalised weights found once instead of at every step; None when nothing is
    penalised (R = 0)."""
    l1, l2 = _check_strength("l1", l1), _check_strength("l2", l2)
    weights = [p for _, p in regularized_parameters(model)]
    if not weights or not (l1 or l2):
        return None
    if {w.dtype for w in weights} in ({torch.float32}, {torch.float64}):
        return lambda: penalty(weights, l1, l2)
    return lambda: regularization_term(model, l1=l1, l2=l2)


def penalty(weights: Sequence[torch.Tensor], l1: float, l2: float, copies: bool = False) -> torch.Tensor | float:
    """``l1 * sum|w| + (l2 / 2) * sum w^2`` over ``weights`` (0.0 when nothing is penalised): the
    one definition of R(theta) that the module form (:func:`regularization_term`), the
    functional objective and the stacked objective share. With ``copies`` each tensor has a
    leading dimension of K stacked copies and the result is each copy's penalty, (K,)."""
    def total_of(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).sum(dim=1) if copies else t.sum()

    terms = []
    for w in weights:
        if l1:
            terms.append(l1 * total_of(w.abs()))
        if l2:
            terms.append((0.5 * l2) * total_of(w.square()))
    return functools.reduce(operator.add, terms) if terms else 0.0  # no 0.0 + tensor: one op fewer

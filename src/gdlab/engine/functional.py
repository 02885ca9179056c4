"""The full-batch objective of a module as a pure function of its parameters.

``L(theta) = sum over chunks of l(f(X_c; theta), y_c) * rows_c / N + R(theta)``, the same objective
:func:`gdlab.engine.gradient.full_batch_loss_and_grad` accumulates, written with
``torch.func.functional_call`` so that ``torch.func`` transforms (grad, vmap) and ``torch.compile``
can work on it. The buffers are held fixed (the fast path and stacked sweeps refuse models whose
forward pass changes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gdlab.engine.chunks import spans
from gdlab.engine.gradient import LossFn
from gdlab.optim.regularization import penalty


def batch_dependent_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose training-mode forward pass depends on the batch or on
    randomness (BatchNorm, Dropout): the functional objective cannot hold them fixed."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)]


@dataclass
class FunctionalObjective:
    """``objective(params, X, y) -> L`` for ``model``: params is the list of its trainable
    parameters (in ``model.parameters()`` order, same shapes), X (N, ...) and y hold all N rows,
    processed ``chunk_size`` rows at a time. ``l1``/``l2`` penalise the weights with ndim >= 2,
    as :func:`gdlab.optim.regularization.regularization_term` does."""

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
        state = {**self.fixed, **dict(zip(self.names, params))}
        n = int(X.shape[0])
        total: Tensor | float = 0.0
        for start, stop in spans(n, self.chunk_size):
            out = functional_call(self.model, state, (X[start:stop],))
            total = total + self.loss_fn(out, y[start:stop]) * ((stop - start) / n)
        return total

    def __call__(self, params: Sequence[Tensor], X: Tensor, y: Tensor) -> Tensor:
        return self.data_loss(params, X, y) + self.regularizer(params)

    def load_into_model(self, params: Sequence[Tensor]) -> None:
        """Copy ``params`` into the model's trainable parameters."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, p in zip(self.names, params):
                named[n].copy_(p)


"""Steppers: how a run computes its steps. The one training loop (:mod:`gdlab.engine.loop`) owns
everything a run records; a stepper owns only the parameters and how they move.

The contract, for the steps s, s+1, ..., s+count-1 starting at the current parameters theta_s:

* :meth:`Stepper.run` computes them and reports, for each step, the loss and gradient norm at
  the parameters the step starts from, its learning rate and the rows its gradient used. It
  may compute the updates ahead (a compiled block does) but commits none of them.
* :meth:`Stepper.accept` commits the first k of those steps (0 <= k <= count), so that the
  parameters become theta_{s+k}: the loop accepts fewer than ``count`` when one of the steps
  must stop the run or be rolled back. It returns what clipping did at each accepted step.
* :meth:`Stepper.back` returns to theta_{s-1} with its optimizer state (once after an accept:
  the non-finite guard's rollback target), :meth:`Stepper.scale_lr` cuts the learning rate for
  the rest of the run, :meth:`Stepper.sync` puts the current parameters into the model (for
  measurements, checkpoints and the final record).

``max_block`` is how many steps one call may cover; evaluation steps (every ``eval_every``)
fall only on a block's first step. A stepper with ``exposes_gradients`` leaves step s's
gradient in ``p.grad`` between ``run(count=1)`` and ``accept`` (diagnostics callbacks see it).

* :class:`~gdlab.engine.steppers.eager.EagerStepper`: torch.optim (and closure optimizers such as
  the line search) on the model itself, one step per call, any regime, any process count;
* :class:`~gdlab.engine.steppers.compiled.CompiledStepper`: a functional step traced into one
  ``torch.compile`` graph per block of steps (regime full, one process);
* :class:`~gdlab.engine.steppers.stacked.StackedLane`: one of K copies trained as one stacked
  model (a sweep over learning rates and seeds), the K loops advanced in lockstep.

Which stepper a run gets is decided in :mod:`gdlab.engine.choose`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Block:
    """What :meth:`Stepper.run` reports for ``count`` steps (lists of length count).

    ``grad_norms[i]`` is the global norm of step i's gradient (in float64), ``rows[i]`` the
    number of rows whose gradient step i computed, over all processes, ``seconds`` the training
    time the block took."""

    losses: list[float]
    grad_norms: list[float]
    lrs: list[float]
    rows: list[int]
    seconds: float


@dataclass(frozen=True)
class Clip:
    """What clipping did at one accepted step: ``factor = after / before`` (1.0 when nothing
    changed) and the global gradient norms before and after."""

    clipped: bool
    factor: float
    before: float
    after: float

    @classmethod
    def scaled(cls, factor: float, before: float) -> Clip:
        """A functional clip's record from its factor and the norm it scaled."""
        return cls(factor != 1.0, factor, before, before * factor)


class Stepper:
    """The interface the loop drives (see the module docstring)."""

    name = "stepper"
    max_block = 1
    max_rows: int | None = None  # the most rows one step uses (None: all N)
    exposes_gradients = False
    full = True  # every step's gradient is over all training rows (its loss is the train loss)
    clipping = False  # whether accept() clips the gradients (then it reports each step's Clip)

    def run(self, step: int, count: int) -> Block:
        raise NotImplementedError

    def accept(self, k: int, step: int) -> tuple[list[Clip | None], float]:
        """Commit the first ``k`` steps of the last ``run``; returns each one's clipping (None
        when clipping is off) and the seconds spent."""
        raise NotImplementedError

    def back(self) -> int | None:
        """Return to the parameters and optimizer state before the last accepted step and give
        that step's number; None when there is none."""
        raise NotImplementedError

    def scale_lr(self, factor: float) -> None:
        raise NotImplementedError

    def lr(self, step: int) -> float:
        """The learning rate step ``step`` will use (for the final record)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Put the current parameters into the model (a no-op for a stepper that trains it)."""

    def measure(self, what: str, default: Callable[[], Any]) -> Any:
        """A measurement at the current parameters: ``what`` is ``"test"`` (test loss and
        accuracy), ``"train"`` (the full training objective) or ``"final"`` (the final record's
        measurements), ``default`` computes it on the model. A stepper that computes it for all
        its copies at once overrides this."""
        self.sync()
        return default()

    @property
    def loss_evaluations(self) -> int | None:
        """Loss evaluations beyond the gradients (a line search's trials), None when not counted."""
        return None

"""The engine: exact full-batch gradients, sample schedules, the one training loop and its steppers.

``train_loop(stepper, objective, data, stop)`` trains with a stepper from
:mod:`gdlab.engine.steppers` (``EagerStepper`` for a model and its torch.optim optimizer);
:mod:`gdlab.engine.choose` decides which stepper a run gets."""

from gdlab.engine.calibrate import auto_chunk_size
from gdlab.engine.objective import (FullBatchObjective, GradientResult, evaluate, full_batch_loss,
                                    full_batch_loss_and_grad, gradient_norm)
from gdlab.engine.loop import Callback, GuardOptions, LoopOutcome, NonFiniteError, StopRules, train_loop
from gdlab.engine.regimes import REGIMES, SampleSchedule, make_schedule

__all__ = [
    "FullBatchObjective", "GradientResult", "auto_chunk_size", "evaluate", "full_batch_loss", "full_batch_loss_and_grad",
    "gradient_norm", "REGIMES", "SampleSchedule", "make_schedule", "Callback", "GuardOptions", "LoopOutcome",
    "NonFiniteError", "StopRules", "train_loop",
]

"""The engine: exact full-batch gradients, sample schedules, the training loop and the runner."""

from gdlab.engine.gradient import (
    FullBatchObjective,
    GradientResult,
    auto_chunk_size,
    evaluate,
    full_batch_loss,
    full_batch_loss_and_grad,
    gradient_norm,
)
from gdlab.engine.regimes import REGIMES, SampleSchedule, make_schedule

__all__ = [
    "FullBatchObjective", "GradientResult", "auto_chunk_size", "evaluate", "full_batch_loss", "full_batch_loss_and_grad",
    "gradient_norm", "REGIMES", "SampleSchedule", "make_schedule",
]

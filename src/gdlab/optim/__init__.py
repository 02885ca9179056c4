"""Update rules, line search, losses and explicit regularizers."""

from gdlab.optim.linesearch import ArmijoLineSearch
from gdlab.optim.losses import LOSSES, get_loss, loss_output_dim
from gdlab.optim.registry import (
    OPTIMIZERS, OptimizerSpec, build_optimizer, optimizer_hyperparameters, validate_hyperparameters,
)
from gdlab.optim.regularization import regularization_term, regularized_parameters

__all__ = [
    "LOSSES", "OPTIMIZERS", "ArmijoLineSearch", "OptimizerSpec", "build_optimizer", "get_loss",
    "loss_output_dim", "optimizer_hyperparameters", "regularization_term", "regularized_parameters",
    "validate_hyperparameters",
]

"""Diagnostics: Hessian-vector products, sharpness and trace, loss-landscape slices."""

from gdlab.diagnostics.hessian import (
    SHARPNESS_METHODS, EigenResult, HessianOperator, TraceResult, dense_hessian, hutchinson_trace, hvp,
    lanczos, power_iteration, sharpness,
)
from gdlab.diagnostics.slices import (
    direction_from_flat, filter_normalized_direction, gradient_direction, loss_along_direction, loss_plane,
)

__all__ = [
    "SHARPNESS_METHODS", "EigenResult", "HessianOperator", "TraceResult", "dense_hessian", "hutchinson_trace",
    "hvp", "lanczos", "power_iteration", "sharpness", "direction_from_flat", "filter_normalized_direction",
    "gradient_direction", "loss_along_direction", "loss_plane",
]

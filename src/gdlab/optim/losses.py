"""Per-sample losses, averaged over the samples of a batch.

Every loss function takes the model output ``out`` (N, K) and the targets ``y`` and returns the
mean over the N samples of the per-sample loss, a 0-dim tensor, so that the engine can weight
chunk means by ``chunk_size / N`` and obtain the exact full-batch mean; with ``reduction="none"``
it returns the N per-sample losses. With ``copies`` the output holds K stacked copies' outputs
and the result is each copy's loss (see :func:`mse`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gdlab.errors import GdlabError, unknown_name

LossFn = Callable[..., torch.Tensor]  # (out, y) -> mean loss


def mse(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", copies: bool = False) -> torch.Tensor:
    """Mean over samples of ``0.5 * ||out_i - y_i||^2`` (summed over the outputs).

    out: (N, K) (or (N, ...), every non-batch dimension is summed); y: same shape, or (N,) when
    K == 1. The ``J = 1/(2m) sum (h - y)^2`` convention, not ``torch.nn.MSELoss`` (a mean over all
    N*K elements without the 1/2): ``mse = 0.5 * K * MSELoss``. ``copies`` (every loss here takes
    it): out[:, k] is stacked copy k's output, y is (N, 1, ...) shared or (N, copies, ...) one per
    copy, and the result is each copy's mean loss, (copies,) (``reduction="none"``: (N, copies)).
    """
    lead = 2 if copies else 1  # the sample dimensions
    if y.dim() == lead and out.dim() == lead + 1 and out.shape[-1] == 1:
        y = y.unsqueeze(-1)
    if out.shape[lead:] != y.shape[lead:] or y.shape[0] != out.shape[0]:
        raise GdlabError(f"mse loss: model output has shape {tuple(out.shape)} but targets have shape "
                         f"{tuple(y.shape)}; the model's output size must equal the target dimension")
    diff = out - y.to(out.dtype)
    if copies and reduction == "mean":  # (0.5 / N) * one sum per copy: three ops (and their backward) fewer
        return diff.square().sum(dim=(0, *range(lead, diff.dim()))) * (0.5 / out.shape[0])
    per_sample = 0.5 * diff.square().flatten(lead).sum(dim=-1)
    return per_sample if reduction != "mean" else per_sample.mean(dim=0) if copies else per_sample.mean()


def cross_entropy(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", copies: bool = False) -> torch.Tensor:
    """Mean over samples of the softmax cross-entropy. out: (N, C) logits; y: (N,) integer class
    labels in [0, C). ``copies``: out (N, K, C), y (N, 1) or (N, K) for K copies, as in :func:`mse`."""
    if y.dim() == (3 if copies else 2) and y.shape[-1] == 1:
        y = y[..., 0]
    if copies:  # torch's (N, C, d) layout: the copies are an extra dimension of each sample
        per_sample = F.cross_entropy(out.transpose(1, 2), y.long().expand(out.shape[:2]), reduction="none")
        return per_sample.mean(dim=0) if reduction == "mean" else per_sample
    return F.cross_entropy(out, y.long(), reduction=reduction)


def bce(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", copies: bool = False) -> torch.Tensor:
    """Mean over samples of the binary cross-entropy on logits. out: (N, 1) or (N,) logits; y: (N,)
    labels in {0, 1}, integer or float. ``copies``: out (N, K, 1), y (N, 1) or (N, K), as in :func:`mse`."""
    lead = out.shape[:2] if copies else out.shape[:1]
    logits = out.reshape(*lead, -1)
    if logits.shape[-1] != 1:
        raise GdlabError(f"bce loss needs one output per sample, got model output {tuple(out.shape)}; "
                         "use cross_entropy for more than two classes")
    if copies:
        target = y.reshape(y.shape[0], -1).to(out.dtype).expand(lead)
        per_sample = F.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")
        return per_sample.mean(dim=0) if reduction == "mean" else per_sample
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), y.reshape(-1).to(out.dtype), reduction=reduction)


_LOSS_FNS: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy, "bce": bce}

LOSSES: dict[str, str] = {
    "mse": "regression: mean of 0.5*||out - y||^2 summed over outputs (= 0.5*K*torch MSELoss)",
    "cross_entropy": "classification: softmax cross-entropy on C logits, integer labels",
    "bce": "2-class classification: binary cross-entropy on one logit, labels in {0, 1}",
}


def get_loss(name: str) -> LossFn:
    """The loss function called `name` (a key of LOSSES): ``fn(out, y) -> 0-dim mean loss``."""
    try:
        return _LOSS_FNS[name]
    except (KeyError, TypeError):
        raise unknown_name("loss", name, LOSSES) from None


def loss_output_dim(name: str, task_type: str, num_classes: int | None, target_dim: int | None) -> int:
    """Number of model outputs that loss `name` needs for the task.

    cross_entropy -> num_classes (classification); bce -> 1 (classification with 2 classes);
    mse -> target_dim (regression). Raises GdlabError for a loss that does not fit the task.
    """
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    if task_type not in ("classification", "regression"):
        raise GdlabError(f"task_type must be 'classification' or 'regression', got '{task_type}'")
    if name == "mse":
        if task_type == "classification":
            raise GdlabError("loss 'mse' does not fit a classification task (integer labels); "
                             "use loss 'cross_entropy' (or 'bce' for 2 classes)")
        if target_dim is None or target_dim < 1:
            raise GdlabError(f"loss 'mse' needs the regression target dimension, got {target_dim}")
        return int(target_dim)
    if task_type == "regression":
        raise GdlabError(f"loss '{name}' needs a classification task; use loss 'mse' for regression")
    if num_classes is None or num_classes < 2:
        raise GdlabError(f"loss '{name}' needs at least 2 classes, got num_classes={num_classes}")
    if name == "bce":
        if num_classes != 2:
            raise GdlabError(f"loss 'bce' needs exactly 2 classes, the task has {num_classes}; "
                             "use loss 'cross_entropy'")
        return 1
    return int(num_classes)

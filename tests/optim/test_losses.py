"""Tests for gdlab.optim.losses: the DESIGN.md loss conventions against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdlab.errors import GdlabError
from gdlab.optim.losses import LOSSES, get_loss, loss_output_dim


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_losses_registry_names_every_loss() -> None:
    """LOSSES lists mse, cross_entropy and bce with a one-line description; get_loss finds each."""
    assert set(LOSSES) == {"mse", "cross_entropy", "bce"}
    for name, text in LOSSES.items():
        assert text and "\n" not in text
        assert callable(get_loss(name))


def test_mse_is_half_sum_over_outputs_mean_over_samples() -> None:
    """mse == 0.5 * K * torch.nn.MSELoss and == a float64 numpy computation of
    (1/N) sum_i 0.5 ||out_i - y_i||^2 (reference: numpy, torch.nn.MSELoss)."""
    n, k = 7, 3
    out = torch.randn(n, k, generator=_gen(1), dtype=torch.float64)
    y = torch.randn(n, k, generator=_gen(2), dtype=torch.float64)
    value = get_loss("mse")(out, y)
    assert value.dim() == 0
    ref_np = np.mean(0.5 * np.sum((out.numpy() - y.numpy()) ** 2, axis=1))
    assert value.item() == pytest.approx(ref_np, rel=1e-14)
    ref_torch = 0.5 * k * torch.nn.MSELoss()(out, y)
    assert value.item() == pytest.approx(ref_torch.item(), rel=1e-14)


def test_mse_accepts_1d_targets_for_one_output() -> None:
    """With K == 1, y of shape (N,) gives the same value as y of shape (N, 1), not an (N, N)
    broadcast (reference: numpy on the column)."""
    out = torch.randn(6, 1, generator=_gen(3), dtype=torch.float64)
    y = torch.randn(6, generator=_gen(4), dtype=torch.float64)
    mse = get_loss("mse")
    ref = np.mean(0.5 * (out.numpy()[:, 0] - y.numpy()) ** 2)
    assert mse(out, y).item() == pytest.approx(ref, rel=1e-14)
    assert mse(out, y.unsqueeze(1)).item() == pytest.approx(ref, rel=1e-14)


def test_mse_shape_mismatch_is_a_gdlab_error() -> None:
    """An output size that differs from the target dimension is a one-line GdlabError."""
    with pytest.raises(GdlabError, match="shape") as info:
        get_loss("mse")(torch.zeros(4, 2), torch.zeros(4, 3))
    assert "\n" not in str(info.value)


def test_cross_entropy_matches_numpy_log_softmax() -> None:
    """cross_entropy == mean_i (-log_softmax(out_i)[y_i]) computed in float64 numpy."""
    n, c = 9, 4
    out = torch.randn(n, c, generator=_gen(5), dtype=torch.float64) * 3
    y = torch.randint(0, c, (n,), generator=_gen(6))
    value = get_loss("cross_entropy")(out, y)
    z = out.numpy()
    shifted = z - z.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ref = -np.mean(log_softmax[np.arange(n), y.numpy()])
    assert value.dim() == 0
    assert value.item() == pytest.approx(ref, rel=1e-13)


@pytest.mark.parametrize("logit_shape", ["column", "flat"])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.float64])
def test_bce_matches_numpy(logit_shape: str, label_dtype: torch.dtype) -> None:
    """bce on logits (N, 1) or (N,) with int or float labels == mean of
    log(1 + exp(z)) - y z in float64 numpy (stable form)."""
    n = 11
    z = torch.randn(n, generator=_gen(7), dtype=torch.float64) * 4
    y = torch.randint(0, 2, (n,), generator=_gen(8))
    out = z.unsqueeze(1) if logit_shape == "column" else z
    value = get_loss("bce")(out, y.to(label_dtype))
    zn, yn = z.numpy(), y.numpy()
    ref = np.mean(np.logaddexp(0.0, zn) - yn * zn)
    assert value.dim() == 0
    assert value.item() == pytest.approx(ref, rel=1e-13)


def test_bce_rejects_several_outputs() -> None:
    """bce with more than one logit per sample is a GdlabError pointing to cross_entropy."""
    with pytest.raises(GdlabError, match="cross_entropy"):
        get_loss("bce")(torch.zeros(3, 2), torch.zeros(3))


def test_get_loss_unknown_name_suggests() -> None:
    """An unknown loss name is a GdlabError with a suggestion and the list of choices."""
    with pytest.raises(GdlabError, match="did you mean 'mse'") as info:
        get_loss("mes")
    assert "choose one of" in str(info.value)


@pytest.mark.parametrize(
    ("name", "task", "classes", "target_dim", "expected"),
    [
        ("cross_entropy", "classification", 10, None, 10),
        ("cross_entropy", "classification", 2, None, 2),
        ("bce", "classification", 2, None, 1),
        ("mse", "regression", None, 3, 3),
        ("mse", "regression", None, 1, 1),
    ],
)
def test_loss_output_dim(
    name: str, task: str, classes: int | None, target_dim: int | None, expected: int
) -> None:
    """Output size per loss: cross_entropy -> classes, bce -> 1, mse -> target dim."""
    assert loss_output_dim(name, task, classes, target_dim) == expected


@pytest.mark.parametrize(
    ("name", "task", "classes", "target_dim", "needle"),
    [
        ("mse", "classification", 3, None, "cross_entropy"),
        ("bce", "classification", 3, None, "2 classes"),
        ("bce", "regression", None, 1, "mse"),
        ("cross_entropy", "regression", None, 2, "mse"),
        ("mse", "regression", None, None, "target dimension"),
        ("mse", "ranking", None, 1, "task_type"),
        ("huber", "regression", None, 1, "unknown loss"),
    ],
)
def test_loss_output_dim_errors(
    name: str, task: str, classes: int | None, target_dim: int | None, needle: str
) -> None:
    """A loss that does not fit the task is a one-line GdlabError saying what to use."""
    with pytest.raises(GdlabError, match=needle) as info:
        loss_output_dim(name, task, classes, target_dim)
    assert "\n" not in str(info.value)

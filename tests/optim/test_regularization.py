"""Tests for gdlab.optim.regularization against hand sums and the closed-form gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdlab.errors import GdlabError
from gdlab.optim.regularization import regularization_term, regularized_parameters


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)).double()


def test_regularized_parameters_are_weight_matrices_only() -> None:
    """Linear weights are penalised; biases and LayerNorm scale/shift are not."""
    names = [n for n, _ in regularized_parameters(_model())]
    assert names == ["0.weight", "3.weight"]


def test_regularized_parameters_conv_and_recurrent() -> None:
    """Conv kernels (4-D) and LSTM weight matrices are penalised, their biases are not;
    frozen parameters are not part of theta."""
    conv = nn.Conv2d(1, 2, 3)
    assert [n for n, _ in regularized_parameters(conv)] == ["weight"]
    lstm = nn.LSTM(3, 4)
    assert sorted(n for n, _ in regularized_parameters(lstm)) == ["weight_hh_l0", "weight_ih_l0"]
    lin = nn.Linear(2, 2)
    lin.weight.requires_grad_(False)
    assert regularized_parameters(lin) == []


def test_regularization_term_equals_hand_sum_over_weights() -> None:
    """R = l1 * sum|w| + l2/2 * sum w^2 over the two weight matrices, summed element by element
    in Python (reference: explicit loop)."""
    model = _model()
    l1, l2 = 0.03, 0.2
    weights = [model[0].weight, model[3].weight]
    ref = 0.0
    for w in weights:
        for v in w.detach().reshape(-1).tolist():
            ref += l1 * abs(v) + 0.5 * l2 * v * v
    value = regularization_term(model, l1=l1, l2=l2)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(ref, rel=1e-13)


def test_regularization_gradient_is_closed_form() -> None:
    """Autograd of R equals l1*sign(w) + l2*w on weights and is 0 on biases and LayerNorm."""
    model = _model()
    l1, l2 = 0.05, 0.3
    regularization_term(model, l1=l1, l2=l2).backward()
    penalised = {n for n, _ in regularized_parameters(model)}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if name in penalised:
            expected = l1 * torch.sign(p.detach()) + l2 * p.detach()
            torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-15)
        else:
            assert torch.count_nonzero(grad) == 0, name


def test_regularization_zero_strengths_give_zero_in_param_dtype() -> None:
    """With l1 == l2 == 0 the term is a 0-dim zero in the parameters' dtype."""
    value = regularization_term(_model())
    assert value.dim() == 0 and value.dtype == torch.float64 and value.item() == 0.0
    value32 = regularization_term(nn.Linear(3, 1), l2=1.0)
    assert value32.dtype == torch.float32


@pytest.mark.parametrize(
    ("l1", "l2"), [(-0.1, 0.0), (0.0, -1.0), (float("nan"), 0.0), (0.0, float("inf"))]
)
def test_regularization_rejects_bad_strengths(l1: float, l2: float) -> None:
    """Negative or non-finite strengths are a one-line GdlabError naming the field."""
    with pytest.raises(GdlabError, match="l1|l2") as info:
        regularization_term(_model(), l1=l1, l2=l2)
    assert "\n" not in str(info.value)

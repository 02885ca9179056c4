"""Tests for gdlab.optim.clipping: value and global-norm clipping against hand float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from gdlab.errors import GdlabError
from gdlab.optim.clipping import ClipResult, clip_gradients


def make_params(seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(4, 3), (3,), (2, 5)]:
        p = torch.zeros(shape, requires_grad=True)
        p.grad = scale * torch.randn(shape, generator=gen)
        params.append(p)
    return params


def hand_norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(math.fsum(float(v) ** 2 for g in grads for v in g.flatten().tolist()))


def test_norm_clipping_scales_to_max_norm_and_keeps_direction() -> None:
    """||g|| > max_norm: g becomes g * max_norm / ||g|| (reference: hand float64 norm), so the
    direction is unchanged and the norm is max_norm."""
    params = make_params(scale=5.0)
    original = [p.grad.double().clone() for p in params]
    before = hand_norm(original)
    assert before > 2.0
    result = clip_gradients(params, max_norm=2.0)
    for p, g in zip(params, original):
        torch.testing.assert_close(p.grad.double(), g * 2.0 / before, rtol=1e-5, atol=1e-7)
    flat_new = torch.cat([p.grad.double().flatten() for p in params])
    flat_old = torch.cat([g.flatten() for g in original])
    cosine = float(flat_new @ flat_old / (flat_new.norm() * flat_old.norm()))
    assert cosine == pytest.approx(1.0, abs=1e-9)
    assert result.clipped
    assert result.norm_before == pytest.approx(before, rel=1e-12)
    assert result.norm_after == pytest.approx(2.0, rel=1e-5)
    assert result.factor == pytest.approx(2.0 / before, rel=1e-5)


def test_norm_below_max_norm_leaves_gradients_unchanged() -> None:
    """||g|| <= max_norm: gradients are bit-for-bit unchanged, factor 1 (reference: the originals)."""
    params = make_params()
    original = [p.grad.clone() for p in params]
    norm = hand_norm(original)
    result = clip_gradients(params, max_norm=norm * (1 + 1e-9))
    for p, g in zip(params, original):
        assert torch.equal(p.grad, g)
    assert not result.clipped and result.factor == 1.0
    assert result.norm_before == result.norm_after == pytest.approx(norm, rel=1e-12)


def test_value_clipping_clamps_each_element() -> None:
    """max_value clamps each element to [-max_value, max_value] (reference: hand clamp)."""
    params = make_params(seed=1)
    original = [p.grad.clone() for p in params]
    result = clip_gradients(params, max_value=0.5)
    for p, g in zip(params, original):
        assert torch.equal(p.grad, g.clamp(-0.5, 0.5))
    assert result.clipped
    assert result.norm_after == pytest.approx(hand_norm([p.grad for p in params]), rel=1e-12)
    assert result.factor == pytest.approx(result.norm_after / result.norm_before)


def test_value_then_norm_clipping() -> None:
    """Both limits: clamp by value first, then scale the clamped gradient to max_norm (reference:
    hand clamp followed by hand rescale)."""
    params = make_params(seed=2, scale=3.0)
    clamped = [p.grad.double().clamp(-1.0, 1.0) for p in params]
    clamped_norm = hand_norm(clamped)
    assert clamped_norm > 0.7
    result = clip_gradients(params, max_norm=0.7, max_value=1.0)
    for p, g in zip(params, clamped):
        torch.testing.assert_close(p.grad.double(), g * 0.7 / clamped_norm, rtol=1e-5, atol=1e-7)
    assert result.norm_after == pytest.approx(0.7, rel=1e-5)


def test_no_limits_and_missing_grads() -> None:
    """No limits change nothing; parameters without a gradient are skipped (reference: originals)."""
    params = make_params()
    original = [p.grad.clone() for p in params]
    skipped = torch.zeros(3, requires_grad=True)
    result = clip_gradients(iter(params + [skipped]))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, original))
    assert skipped.grad is None
    assert not result.clipped and result.factor == 1.0
    assert result.norm_before == pytest.approx(hand_norm(original), rel=1e-12)
    empty = clip_gradients([], max_norm=1.0)
    assert empty == ClipResult(0.0, 0.0, False, 1.0)


def test_non_finite_norm_is_not_rescaled() -> None:
    """A NaN gradient makes the norm non-finite; norm clipping leaves it alone for the
    non-finite guard instead of spreading NaN to every element."""
    params = make_params()
    params[0].grad[0, 0] = float("nan")
    finite_before = params[1].grad.clone()
    result = clip_gradients(params, max_norm=1.0)
    assert math.isnan(result.norm_before) and not result.clipped
    assert torch.equal(params[1].grad, finite_before)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_norm": 0.0}, {"max_norm": -1.0}, {"max_value": 0}, {"max_norm": float("nan")}, {"max_value": "1"}],
)
def test_bad_limits_raise_gdlab_error(kwargs) -> None:
    """Limits must be numbers > 0."""
    with pytest.raises(GdlabError, match="must be a number > 0"):
        clip_gradients(make_params(), **kwargs)

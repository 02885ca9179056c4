"""Loss slices against the engine's full-batch loss and gradient, finite differences and Li et al."""

import numpy as np
import pytest
import torch
from torch import nn

from gdlab.diagnostics import (
    HessianOperator,
    direction_from_flat,
    filter_normalized_direction,
    gradient_direction,
    lanczos,
    loss_along_direction,
    loss_plane,
)
from gdlab.engine import full_batch_loss, full_batch_loss_and_grad, gradient_norm
from gdlab.errors import GdlabError
from gdlab.optim.losses import cross_entropy
from gdlab.optim.regularization import regularization_term

N = 29


def make_case(batchnorm=False):
    g = torch.Generator().manual_seed(2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers = [nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.Tanh(), nn.Linear(8, 3)]
        model = nn.Sequential(*layers).double()
    X = torch.randn(N, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, X, y


def reg_for(model):
    return lambda: regularization_term(model, l2=0.05)


def test_alpha_zero_gives_the_current_full_batch_loss():
    """L(theta + 0 d) is the engine's full_batch_loss at theta, for any chunk size."""
    model, X, y = make_case()
    reg = reg_for(model)
    d = filter_normalized_direction(model, seed=1)
    expected = full_batch_loss(model, cross_entropy, X, y, regularizer=reg)
    got = loss_along_direction(model, cross_entropy, X, y, d, [0.0, 0.5], chunk_size=6, regularizer=reg)
    assert got[0] == pytest.approx(expected, rel=1e-12)
    assert got[1] != pytest.approx(expected, rel=1e-6)


def test_derivative_along_gradient_direction_is_minus_gradient_norm():
    """Central finite difference of L along -g/||g|| at 0 equals -||g|| (engine gradient)."""
    model, X, y = make_case()
    reg = reg_for(model)
    full_batch_loss_and_grad(model, cross_entropy, X, y, regularizer=reg)
    norm = gradient_norm(list(model.parameters()))
    d = gradient_direction(model, cross_entropy, X, y, regularizer=reg, chunk_size=4)
    assert float(torch.sqrt(sum(t.square().sum() for t in d))) == pytest.approx(1.0, abs=1e-12)
    h = 1e-5
    minus, plus = loss_along_direction(model, cross_entropy, X, y, d, [-h, h], regularizer=reg)
    assert (plus - minus) / (2 * h) == pytest.approx(-norm, rel=1e-6)


def test_second_difference_along_top_eigenvector_equals_sharpness():
    """Curvature of the slice along the top Lanczos eigenvector (direction_from_flat) is lambda_max."""
    model, X, y = make_case()
    result = lanczos(HessianOperator(model, cross_entropy, X, y), iters=60)
    d = direction_from_flat(result.vectors[0], model)
    h = 1e-4
    minus, centre, plus = loss_along_direction(model, cross_entropy, X, y, d, [-h, 0.0, h])
    assert (plus - 2 * centre + minus) / h**2 == pytest.approx(result.values[0], rel=1e-4)


def test_loss_plane_has_grid_shape_and_current_loss_at_the_centre():
    """(len(alphas), len(betas)) array; [i, j] matches the 1-D slice along a*d1 + b*d2."""
    model, X, y = make_case()
    d1 = filter_normalized_direction(model, seed=1)
    d2 = filter_normalized_direction(model, seed=2)
    alphas, betas = [-0.5, 0.0, 0.5], [-1.0, 0.0, 0.25, 1.0]
    plane = loss_plane(model, cross_entropy, X, y, d1, d2, alphas, betas, chunk_size=10)
    assert plane.shape == (3, 4) and plane.dtype == np.float64
    assert plane[1, 1] == pytest.approx(full_batch_loss(model, cross_entropy, X, y), rel=1e-12)
    combined = [a + 0.5 * b for a, b in zip(d1, d2)]  # 0.5 * combined = 0.5 d1 + 0.25 d2
    along_combined = loss_along_direction(model, cross_entropy, X, y, combined, [0.5])
    assert plane[2, 2] == pytest.approx(along_combined[0], rel=1e-10)
    along_d1 = loss_along_direction(model, cross_entropy, X, y, d1, alphas)
    np.testing.assert_allclose(plane[:, 1], along_d1, rtol=1e-12)


def test_filter_normalized_direction_matches_filter_norms_and_zeroes_1d_parameters():
    """Li et al. 2018: each dim-0 slice has the parameter's slice norm; biases and BN get zeros."""
    model, _, _ = make_case(batchnorm=True)
    d = filter_normalized_direction(model, seed=3)
    for p, t in zip(model.parameters(), d):
        assert t.shape == p.shape and t.dtype == p.dtype
        if p.dim() == 1:
            assert torch.count_nonzero(t) == 0
        else:
            filter_norms = p.detach().flatten(1).norm(dim=1)
            torch.testing.assert_close(t.flatten(1).norm(dim=1), filter_norms, rtol=1e-12, atol=0)
            assert not torch.allclose(t, p)
    again = filter_normalized_direction(model, seed=3)
    other = filter_normalized_direction(model, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    assert not all(torch.equal(a, b) for a, b in zip(d, other))


def test_every_call_leaves_parameters_grads_mode_and_buffers_bit_identical():
    """Params (bit-exact), p.grad objects, train mode and BatchNorm statistics survive every call."""
    model, X, y = make_case(batchnorm=True)
    model.train()
    sentinels = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinels):
        p.grad = s
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    d1 = gradient_direction(model, cross_entropy, X, y, chunk_size=N)
    d2 = filter_normalized_direction(model)
    calls = [
        lambda: loss_along_direction(model, cross_entropy, X, y, d1, [0.3, -0.7, 1e-3], chunk_size=N),
        lambda: loss_plane(model, cross_entropy, X, y, d1, d2, [0.1, 0.2], [-0.3, 0.9], chunk_size=N),
        lambda: direction_from_flat(torch.ones(sum(p.numel() for p in params)), model),
    ]
    for call in [lambda: None, *calls]:
        call()
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
        assert all(p.grad is s for p, s in zip(model.parameters(), sentinels))
        assert all(torch.equal(s, torch.full_like(s, 3.0)) for s in sentinels)
        assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
        assert model.training and all(m.training for m in model.modules())


def test_direction_from_flat_splits_in_parameter_order():
    """Pieces follow model.parameters() order and shapes, in each parameter's dtype."""
    model, _, _ = make_case()
    model[-1].float()
    params = list(model.parameters())
    flat = torch.arange(sum(p.numel() for p in params), dtype=torch.float64)
    pieces = direction_from_flat(flat, params)
    assert [t.shape for t in pieces] == [p.shape for p in params]
    assert [t.dtype for t in pieces] == [p.dtype for p in params]
    torch.testing.assert_close(torch.cat([t.double().reshape(-1) for t in pieces]), flat)


def test_bad_directions_and_a_zero_gradient_raise_gdlab_error():
    """Wrong lengths or shapes, and a stationary point for gradient_direction, are user errors."""
    model, X, y = make_case()
    d = filter_normalized_direction(model)
    with pytest.raises(GdlabError, match="tensors"):
        loss_along_direction(model, cross_entropy, X, y, d[:-1], [0.0])
    with pytest.raises(GdlabError, match="shape"):
        loss_plane(model, cross_entropy, X, y, d, [t.reshape(-1) for t in d], [0.0], [0.0])
    with pytest.raises(GdlabError, match="length"):
        direction_from_flat(torch.zeros(3), model)
    flat = nn.Linear(2, 1, bias=False).double()
    nn.init.zeros_(flat.weight)
    X0, y0 = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(GdlabError, match="gradient norm"):
        gradient_direction(flat, lambda out, t: 0.5 * (out - t).square().mean(), X0, y0)

"""Hessian-vector products, eigenvalues and trace against dense Hessians and closed forms (float64)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from gdlab.diagnostics import (
    HessianOperator,
    dense_hessian,
    hutchinson_trace,
    hvp,
    lanczos,
    power_iteration,
    sharpness,
)
from gdlab.errors import GdlabError
from gdlab.optim.losses import cross_entropy, mse
from gdlab.optim.regularization import regularization_term

N = 23  # prime: chunk size 7 leaves a short last chunk
L2 = 0.3


class LastStep(nn.Module):
    def __init__(self, cell, out):
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, out)

    def forward(self, x):
        out, _ = self.cell(x)
        return self.head(out[:, -1])


def make_case(family, n=N):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (n,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if family == "mlp":
            model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
            X, y, loss = torch.randn(n, 4, generator=g), labels, cross_entropy
        elif family == "cnn":
            model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3))
            X, y, loss = torch.randn(n, 1, 6, 6, generator=g), labels, cross_entropy
        elif family in ("lstm", "gru"):
            cell = nn.LSTM if family == "lstm" else nn.GRU
            model = LastStep(cell(2, 3, batch_first=True), 2)
            X, y, loss = torch.randn(n, 5, 2, generator=g), torch.randn(n, 2, generator=g), mse
        elif family == "logistic":
            model = nn.Linear(5, 3)
            X, y, loss = torch.randn(n, 5, generator=g), labels, cross_entropy
        else:
            raise ValueError(family)
    y = y.double() if y.is_floating_point() else y
    return model.double(), X.double(), y, loss


def reference_hessian(model, loss_fn, X, y, l2=0.0):
    """Dense Hessian of the whole-set objective, by torch.autograd.functional.hessian on the flat
    parameters, with the L2 term 0.5*l2*sum w^2 over weights (ndim >= 2) written out."""
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def objective(flat):
        pieces = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}
        value = loss_fn(functional_call(model, params, (X,)), y)
        return value + 0.5 * l2 * sum(t.square().sum() for t in params.values() if t.dim() >= 2)

    return torch.autograd.functional.hessian(objective, flat0)


def flat_vector(model, seed=5):
    dim = sum(p.numel() for p in model.parameters())
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def split_like(vec, model):
    params = list(model.parameters())
    return [t.reshape(p.shape) for t, p in zip(torch.split(vec, [p.numel() for p in params]), params)]


@pytest.mark.parametrize("chunk_size", [1, 7, N])
def test_hvp_of_mlp_with_l2_equals_dense_hessian_times_vector(chunk_size):
    """Chunked double-backward HVP (chunks 1, 7, N) equals the dense autograd Hessian times v."""
    model, X, y, loss = make_case("mlp")
    v = flat_vector(model)
    expected = reference_hessian(model, loss, X, y, l2=L2) @ v
    got = hvp(model, loss, X, y, split_like(v, model), chunk_size=chunk_size,
              regularizer=lambda: regularization_term(model, l2=L2))
    flat = torch.cat([t.reshape(-1) for t in got])
    torch.testing.assert_close(flat, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family,chunk_size", [("cnn", 5), ("lstm", 4), ("gru", 6)])
def test_hvp_of_cnn_lstm_and_gru_equals_dense_hessian_times_vector(family, chunk_size):
    """Chunked HVP through Conv2d, nn.LSTM and nn.GRU (double backward on CPU) equals the dense
    autograd Hessian times v."""
    model, X, y, loss = make_case(family)
    v = flat_vector(model)
    expected = reference_hessian(model, loss, X, y) @ v
    op = HessianOperator(model, loss, X, y, chunk_size=chunk_size)
    torch.testing.assert_close(op.matvec(v), expected, rtol=1e-10, atol=1e-12)


def test_hvp_leaves_parameters_grads_mode_and_batchnorm_statistics_untouched():
    """After HVPs in training mode with BatchNorm: same params (bit), p.grad object, mode, buffers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
    model.double().train()
    X, y = torch.randn(N, 4, dtype=torch.float64), torch.randint(0, 2, (N,))
    params = [p.detach().clone() for p in model.parameters()]
    sentinels = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinels):
        p.grad = s
    buffers = [b.clone() for b in model.buffers()]
    op = HessianOperator(model, cross_entropy, X, y, chunk_size=N)
    lanczos(op, iters=5)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    for p, s in zip(model.parameters(), sentinels):
        assert p.grad is s and torch.equal(s, torch.full_like(s, 7.0))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))


def test_operator_counts_products_and_dense_hessian_is_symmetric():
    """num_hvps counts matvecs; dense_hessian (dim matvecs) equals the autograd Hessian."""
    model, X, y, loss = make_case("mlp")
    op = HessianOperator(model, loss, X, y, chunk_size=7)
    H = dense_hessian(op)
    assert op.num_hvps == op.dim == H.shape[0]
    torch.testing.assert_close(H, reference_hessian(model, loss, X, y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H, H.T, rtol=1e-10, atol=1e-12)


def test_power_iteration_matches_eigvalsh_for_convex_softmax_regression():
    """Softmax regression has a PSD Hessian, so the dominant eigenvalue is the top one (eigvalsh)."""
    model, X, y, loss = make_case("logistic", n=40)
    op = HessianOperator(model, loss, X, y)
    top = np.linalg.eigvalsh(reference_hessian(model, loss, X, y).numpy()).max()
    result = power_iteration(op, iters=2000, tol=1e-13)
    assert result.converged and result.hvps == len(result.history) == op.num_hvps
    assert abs(result.values[0] - top) <= 1e-6 * top
    assert abs(float(result.vectors[0].norm()) - 1.0) < 1e-12


class MatrixOperator:
    def __init__(self, matrix):
        self.matrix = matrix
        self.dim = matrix.shape[0]

    def matvec(self, v):
        return self.matrix @ v


def test_power_iteration_returns_the_largest_magnitude_eigenvalue_with_its_sign():
    """On diag(-5, 2, 1) rotated, power iteration returns -5 (dominant), Lanczos the top, 2."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    op = MatrixOperator(q @ torch.diag(torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64)) @ q.T)
    assert power_iteration(op, iters=500, tol=1e-14).values[0] == pytest.approx(-5.0, rel=1e-10)
    assert lanczos(op, iters=3).values[0] == pytest.approx(2.0, rel=1e-10)


def test_lanczos_top3_matches_eigvalsh_of_indefinite_mlp_hessian():
    """Top-3 Ritz values equal the 3 largest eigvalsh values; Ritz vectors are eigenvectors."""
    model, X, y, loss = make_case("mlp")
    H = reference_hessian(model, loss, X, y)
    expected = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:3]
    assert np.linalg.eigvalsh(H.numpy()).min() < 0  # indefinite: a real test of "algebraic"
    result = lanczos(HessianOperator(model, loss, X, y), k=3, iters=45)
    np.testing.assert_allclose(result.values, expected, rtol=1e-6)
    assert result.values == sorted(result.values, reverse=True)
    for value, vec in zip(result.values, result.vectors):
        assert float(vec.norm()) == pytest.approx(1.0, abs=1e-12)
        assert float((H @ vec - value * vec).norm()) < 1e-5 * abs(expected[0])


def digits_mlp():
    from gdlab.data.bundled import load_sklearn

    Xn, yn = load_sklearn("digits")
    Xn = (Xn - Xn.mean(0)) / (Xn.std(0) + 1e-8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 10)).double()
    return model, torch.tensor(Xn), torch.tensor(yn)


def test_lanczos_reaches_1e3_relative_accuracy_in_30_hvps_on_digits_mlp():
    """64-48-10 tanh (3610 parameters) on digits: 30 HVPs give the top eigenvalue to 1e-3 of a
    150-iteration Lanczos reference."""
    model, X, y = digits_mlp()
    op = HessianOperator(model, cross_entropy, X, y)
    reference = lanczos(op, iters=150, seed=1).values[0]
    result = lanczos(op, iters=30)
    assert result.hvps == 30
    assert abs(result.values[0] - reference) <= 1e-3 * reference


def test_lanczos_with_tol_stops_early_and_reports_convergence():
    """With tol the run stops once the top Ritz value settles; history has one entry per HVP."""
    model, X, y, loss = make_case("logistic", n=40)
    op = HessianOperator(model, loss, X, y)
    result = lanczos(op, iters=18, tol=1e-8)
    assert result.converged and result.hvps < 18 and len(result.history) == result.hvps
    top = np.linalg.eigvalsh(reference_hessian(model, loss, X, y).numpy()).max()
    assert result.values[0] == pytest.approx(top, rel=1e-7)


def test_hutchinson_trace_is_within_3_stderr_of_dense_trace():
    """Rademacher probes average to trace(H) of the dense autograd Hessian."""
    model, X, y, loss = make_case("mlp")
    trace = float(torch.trace(reference_hessian(model, loss, X, y)))
    result = hutchinson_trace(HessianOperator(model, loss, X, y), samples=2000)
    assert result.hvps == 2000
    assert abs(result.estimate - trace) <= 3 * result.stderr
    assert abs(result.estimate - trace) <= 0.03 * abs(trace)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_least_squares_sharpness_is_top_eigenvalue_of_gram_matrix(method):
    """mse = mean 0.5*(x.w - y)^2 has Hessian X^T X / N: sharpness = eigvalsh(X^T X / N).max();
    an L2 term adds l2 to every eigenvalue."""
    g = torch.Generator().manual_seed(3)
    scales = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64) * scales
    y = torch.randn(50, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    top = np.linalg.eigvalsh((X.T @ X / 50).numpy()).max()
    result = sharpness(model, mse, X, y, method=method, iters=200, tol=1e-12, chunk_size=9)
    assert result.values[0] == pytest.approx(top, rel=1e-6)
    regularized = sharpness(model, mse, X, y, method=method, iters=200, tol=1e-12,
                            regularizer=lambda: regularization_term(model, l2=L2))
    assert regularized.values[0] == pytest.approx(top + L2, rel=1e-6)


def test_float32_model_gives_float64_vectors_close_to_float64_sharpness():
    """A float32 copy of the model: same sharpness to float32 accuracy, float64 operator output."""
    model, X, y, loss = make_case("mlp")
    op32 = HessianOperator(copy.deepcopy(model).float(), loss, X.float(), y)
    assert op32.matvec(flat_vector(model)).dtype == torch.float64
    reference = lanczos(HessianOperator(model, loss, X, y), iters=45).values[0]
    assert lanczos(op32, iters=45).values[0] == pytest.approx(reference, rel=1e-4)


def test_seeded_solvers_are_reproducible_and_leave_the_global_rng_alone():
    """Same seed, same history; the global torch RNG state is unchanged by the solvers."""
    model, X, y, loss = make_case("mlp")
    op = HessianOperator(model, loss, X, y)
    state = torch.get_rng_state()
    first = lanczos(op, iters=6, seed=4)
    power_iteration(op, iters=3, seed=4)
    hutchinson_trace(op, samples=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert lanczos(op, iters=6, seed=4).history == first.history
    assert lanczos(op, iters=6, seed=5).history != first.history


def test_bad_arguments_raise_gdlab_error():
    """k < 1, iters < k, k > dim, samples < 1, mismatched vec and unknown method are user errors."""
    model, X, y, loss = make_case("mlp")
    op = HessianOperator(model, loss, X, y)
    cases = [
        lambda: lanczos(op, k=0),
        lambda: lanczos(op, k=5, iters=3),
        lambda: lanczos(op, k=op.dim + 1, iters=op.dim + 1),
        lambda: power_iteration(op, iters=0),
        lambda: hutchinson_trace(op, samples=0),
        lambda: hvp(model, loss, X, y, [torch.zeros(3)]),
        lambda: hvp(model, loss, X, y, [torch.zeros(2, 2) for _ in model.parameters()]),
        lambda: op.matvec(torch.zeros(op.dim + 1, dtype=torch.float64)),
        lambda: sharpness(model, loss, X, y, method="lanczoz"),
    ]
    for case in cases:
        with pytest.raises(GdlabError) as info:
            case()
        assert "\n" not in str(info.value)


def test_non_finite_products_give_nan_estimates_not_an_exception():
    """A diverged model (NaN parameters): Lanczos and power iteration report NaN, not converged."""
    model, X, y, loss = make_case("mlp")
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    op = HessianOperator(model, loss, X, y)
    for result in (lanczos(op, k=2, iters=5), power_iteration(op, iters=5)):
        assert np.isnan(result.values[0]) and not result.converged

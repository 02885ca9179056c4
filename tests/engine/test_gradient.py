"""The chunked full-batch gradient against one autograd pass over the whole set (float64)."""

import math
import pytest
import torch
from torch import nn

from gdlab.engine.calibrate import auto_chunk_size
from gdlab.engine.objective import (
    evaluate,
    full_batch_loss,
    full_batch_loss_and_grad,
    gradient_norm,
)

N = 37  # prime: no chunk size below N divides it


def half_sse(out, y):
    """Per-sample 0.5 * squared error summed over outputs, averaged over rows (the mse convention)."""
    return 0.5 * ((out - y) ** 2).sum(dim=-1).mean()


def ce(out, y):
    return nn.functional.cross_entropy(out, y)


class LastStep(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, 3)

    def forward(self, x):
        out, _ = self.cell(x)
        return self.head(out[:, -1])


def make_case(family):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if family == "linear":
        model, X = nn.Linear(5, 3), torch.randn(N, 5, generator=g)
        y, loss = torch.randn(N, 3, generator=g), half_sse
    elif family == "mlp":
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        X, y, loss = torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g), ce
    elif family == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
        )
        X, y, loss = torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 3, (N,), generator=g), ce
    elif family == "lstm":
        model = LastStep(nn.LSTM(2, 8, num_layers=2, batch_first=True))
        X, y, loss = torch.randn(N, 7, 2, generator=g), torch.randn(N, 3, generator=g), half_sse
    else:
        raise ValueError(family)
    return model.double(), X.double(), (y.double() if y.is_floating_point() else y), loss


def reference(model, loss, X, y, reg=None):
    params = list(model.parameters())
    total = loss(model(X), y) + (reg() if reg else 0.0)
    return float(total.detach()), torch.autograd.grad(total, params)


def max_rel_err(params, ref_grads):
    got = torch.cat([p.grad.reshape(-1) for p in params])
    ref = torch.cat([g.reshape(-1) for g in ref_grads])
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("family", ["linear", "mlp", "cnn", "lstm"])
@pytest.mark.parametrize("chunk", [1, 5, 16, N, 1000])
def test_chunked_gradient_equals_whole_set_autograd(family, chunk):
    """Any chunk size gives the whole-batch autograd loss and gradient to 1e-10 (float64),
    including chunk sizes that do not divide N and chunks larger than N."""
    model, X, y, loss = make_case(family)
    ref_loss, ref_grads = reference(model, loss, X, y)
    res = full_batch_loss_and_grad(model, loss, X, y, chunk_size=chunk)
    assert abs(res.loss - ref_loss) <= 1e-10 * abs(ref_loss)
    assert max_rel_err(list(model.parameters()), ref_grads) <= 1e-10
    assert res.num_chunks == -(-N // min(chunk, N))
    assert res.num_samples == N


def test_regularizer_is_added_once_not_per_chunk():
    """R(theta) enters the loss and gradient exactly once, whatever the chunk count."""
    model, X, y, loss = make_case("mlp")

    def reg():
        return 0.03 * sum((p**2).sum() for p in model.parameters() if p.dim() > 1)

    ref_loss, ref_grads = reference(model, loss, X, y, reg)
    res = full_batch_loss_and_grad(model, loss, X, y, chunk_size=4, regularizer=reg)
    assert abs(res.loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert abs(res.reg_loss - float(reg().detach())) <= 1e-14
    assert max_rel_err(list(model.parameters()), ref_grads) <= 1e-10


def test_memory_is_bounded_by_the_chunk():
    """The model never sees more than chunk rows in one forward pass (activations scale with the
    chunk, not with N)."""
    model, X, y, loss = make_case("mlp")
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    full_batch_loss_and_grad(model, loss, X, y, chunk_size=8)
    assert max(seen) == 8 and sum(seen) == N


def test_auto_chunk_size_follows_the_memory_budget():
    """A tiny budget gives a chunk smaller than N (and still the exact gradient); a large one gives N."""
    model, X, y, loss = make_case("mlp")
    assert auto_chunk_size(model, X, memory_budget_mb=1024) == N
    small = auto_chunk_size(model, X, memory_budget_mb=0.002)
    assert 1 <= small < N
    ref_loss, ref_grads = reference(model, loss, X, y)
    res = full_batch_loss_and_grad(model, loss, X, y, memory_budget_mb=0.002)
    assert res.num_chunks > 1
    assert max_rel_err(list(model.parameters()), ref_grads) <= 1e-10


def bn_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2)).double()


def test_batchnorm_dropout_eval_mode_is_chunk_invariant():
    """In eval mode (layer_mode eval) BatchNorm uses running statistics and Dropout is off, so
    every chunk size gives the whole-set gradient."""
    model = bn_model().eval()
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(N, 4, generator=g).double(), torch.randint(0, 2, (N,), generator=g)
    ref_loss, ref_grads = reference(model, ce, X, y)
    for chunk in (3, 10, N):
        res = full_batch_loss_and_grad(model, ce, X, y, chunk_size=chunk)
        assert abs(res.loss - ref_loss) <= 1e-10 * ref_loss
        assert max_rel_err(list(model.parameters()), ref_grads) <= 1e-10


def test_batchnorm_train_mode_uses_per_chunk_statistics():
    """In train mode a single chunk equals the whole-batch train-mode gradient; smaller chunks give
    the size-weighted sum of each chunk's own BatchNorm gradient (the documented meaning), which
    differs from the whole-batch one."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double().train()
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(N, 4, generator=g).double(), torch.randint(0, 2, (N,), generator=g)
    params = list(model.parameters())
    ref_loss, ref_grads = reference(model, ce, X, y)
    full_batch_loss_and_grad(model, ce, X, y, chunk_size=N)
    assert max_rel_err(params, ref_grads) <= 1e-10

    chunk = 10
    per_chunk = [torch.zeros_like(p) for p in params]
    for start in range(0, N, chunk):
        Xc, yc = X[start:start + chunk], y[start:start + chunk]
        grads = torch.autograd.grad(ce(model(Xc), yc) * (Xc.shape[0] / N), params)
        for acc, gr in zip(per_chunk, grads):
            acc += gr
    full_batch_loss_and_grad(model, ce, X, y, chunk_size=chunk)
    assert max_rel_err(params, per_chunk) <= 1e-10
    assert max_rel_err(params, ref_grads) > 1e-4


def test_low_precision_parameters_accumulate_in_float32():
    """bfloat16 parameters get gradients accumulated in float32 buffers: close to the float64
    reference, and much closer than naive bf16 accumulation over many chunks would be."""
    model, X, y, loss = make_case("linear")
    ref_loss, ref_grads = reference(model, loss, X, y)
    low = nn.Linear(5, 3)
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    full_batch_loss_and_grad(low, loss, X.to(torch.bfloat16), y.to(torch.bfloat16), chunk_size=1)
    assert all(p.grad.dtype == torch.bfloat16 for p in low.parameters())
    got = torch.cat([p.grad.double().reshape(-1) for p in low.parameters()])
    ref = torch.cat([g.reshape(-1) for g in ref_grads])
    assert float((got - ref).norm() / ref.norm()) < 3e-2


def test_full_batch_loss_and_evaluate_match_direct_computation():
    """The gradient-free loss and the accuracy equal direct whole-set computations."""
    model, X, y, loss = make_case("mlp")
    direct = float(loss(model(X), y).detach())
    assert abs(full_batch_loss(model, loss, X, y, chunk_size=6) - direct) <= 1e-12 * direct
    test_loss, acc = evaluate(model, loss, X, y, classification=True, chunk_size=5)
    assert abs(test_loss - direct) <= 1e-12 * direct
    assert acc == pytest.approx(float((model(X).argmax(-1) == y).double().mean()))
    assert evaluate(model, loss, X[:0], y[:0], classification=True) == (None, None)


@pytest.mark.parametrize("shuffle", [False, True])
def test_full_batch_loss_and_evaluate_stream_a_dataloader(shuffle):
    """From a DataLoader (batches of 4, shuffled or not) the loss and the accuracy equal the
    direct whole-set computation, as from tensors."""
    from torch.utils.data import DataLoader, TensorDataset

    model, X, y, loss = make_case("mlp")
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=shuffle)
    direct = float(loss(model(X), y).detach())
    assert abs(full_batch_loss(model, loss, loader) - direct) <= 1e-12 * direct
    test_loss, acc = evaluate(model, loss, loader, classification=True)
    assert abs(test_loss - direct) <= 1e-12 * direct
    assert acc == pytest.approx(float((model(X).argmax(-1) == y).double().mean()), abs=1e-15)


def test_gradient_norm_is_the_norm_of_the_concatenated_gradient():
    """gradient_norm equals the 2-norm of all gradients flattened into one vector."""
    model, X, y, loss = make_case("cnn")
    full_batch_loss_and_grad(model, loss, X, y)
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert gradient_norm(list(model.parameters())) == pytest.approx(float(flat.norm()), rel=1e-12)


def test_stacked_correct_counts_equal_argmax_per_copy_ties_included():
    """correct() over K stacked copies' logits (a strided (B, K, C) view, as the stacked forward
    returns them) counts per copy what argmax over each copy's own (B, C) logits counts, ties
    (first maximum wins) included."""
    from gdlab.engine.objective import correct

    g = torch.Generator().manual_seed(0)
    for C in (2, 3, 10):
        logits = torch.randint(0, 3, (50, C, 8), generator=g).double()  # small integers: many ties
        out, y = logits.transpose(1, 2), torch.randint(0, C, (50,), generator=g)
        expected = [int((out[:, k].argmax(-1) == y).sum()) for k in range(8)]
        assert correct(out, y).tolist() == expected
        assert int(correct(out[:, 0].contiguous(), y)) == expected[0]


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e25, 3e38])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_norm_of_low_precision_gradients_matches_float64_at_every_scale(scale, dtype):
    """Norms of float32/bfloat16 gradients, computed in float32 for speed, equal the float64 norm
    of the same values to float32 rounding even where float32 squares underflow (1e-30) or
    overflow (1e25, 3e38): a vanishing gradient is not zero and a finite one is not inf."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.zeros(n, dtype=dtype, requires_grad=True) for n in (7, 300, 1)]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).clamp(-3e38, 3e38).to(dtype)
    exact = float(torch.cat([p.grad.double() for p in params]).norm())
    assert exact > 0 and math.isfinite(exact)
    assert gradient_norm(params) == pytest.approx(exact, rel=1e-5)


def test_gradient_norm_is_inf_or_nan_only_for_such_gradients():
    p = torch.zeros(3, requires_grad=True)
    for bad, check in [(math.inf, math.isinf), (math.nan, math.isnan)]:
        p.grad = torch.tensor([1.0, bad, 2.0])
        assert check(gradient_norm([p]))

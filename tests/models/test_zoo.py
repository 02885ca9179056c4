"""Tests for gdlab.models.zoo: shapes, forward maths against hand-written references, seeding,
parameter counts, user modules and the errors that tie a spec to the data."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from gdlab.errors import GdlabError
from gdlab.models import build_model, count_parameters
from gdlab.models.zoo import LeNet, ResNet

DIGITS = dict(input_shape=(64,), image_shape=(1, 8, 8))
SIGNAL = dict(input_shape=(40,), image_shape=None)
MNIST = dict(input_shape=(1, 28, 28), image_shape=None)
TABULAR = dict(input_shape=(5,), image_shape=None)
SEQUENCE = dict(input_shape=(12, 3), image_shape=None)


@pytest.mark.parametrize(
    ("spec", "data"),
    [
        ("linear", TABULAR),
        ("linear", MNIST),
        ("logistic", DIGITS),
        ("logistic:5-3", TABULAR),
        ("mlp:5-7-3", TABULAR),
        ("mlp:16x2:tanh:bn:dropout=0.1", DIGITS),
        ("mlp:8x1:gelu", SEQUENCE),
        ("mlp:8x2:sigmoid", MNIST),
        ("cnn:lenet", DIGITS),
        ("cnn:lenet:tanh", SIGNAL),
        ("cnn:lenet", MNIST),
        ("cnn:lenet", dict(input_shape=(1, 2, 2), image_shape=None)),
        ("cnn:lenet", dict(input_shape=(3,), image_shape=None)),
        ("cnn:lenet:leaky_relu", SEQUENCE),
        ("cnn:resnet:4", DIGITS),
        ("cnn:resnet:4", SIGNAL),
        ("cnn:resnet:4", MNIST),
        ("cnn:resnet:4", dict(input_shape=(3, 1, 1), image_shape=None)),
        ("rnn:6", SEQUENCE),
        ("lstm:6x2", SEQUENCE),
        ("gru:6x2", SEQUENCE),
    ],
)
def test_every_family_maps_n_samples_to_n_by_output_dim(spec: str, data: dict) -> None:
    """Forward maps (N, *input_shape) to (N, output_dim) and every parameter gets a finite
    gradient; reference: the contract's shape rule."""
    model = build_model(spec, data["input_shape"], 3, image_shape=data["image_shape"], seed=1)
    x = torch.randn(4, *data["input_shape"])
    out = model(x)
    assert out.shape == (4, 3)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_linear_equals_x_times_w_transpose_plus_b() -> None:
    """`linear` is the affine map X @ W.T + b on flattened inputs; reference: that explicit
    formula on the model's own (single) weight and bias."""
    model = build_model("linear", (2, 3), 4, dtype=torch.float64)
    (weight, bias) = list(model.parameters())
    assert weight.shape == (4, 6) and bias.shape == (4,)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x), x.reshape(7, 6) @ weight.T + bias)


def test_logistic_is_the_same_affine_map_as_linear() -> None:
    """`logistic` and `linear` built with the same seed have the same parameters and outputs."""
    x = torch.randn(5, 4)
    lin = build_model("linear:4-3", (4,), 3, seed=3)
    log = build_model("logistic", (4,), 3, seed=3)
    torch.testing.assert_close(lin(x), log(x))


def test_mlp_equals_hand_written_composition_of_its_layers() -> None:
    """MLP forward equals tanh(x W1^T + b1) -> tanh(. W2^T + b2) -> . W3^T + b3 written by hand
    with the model's weights, in float64."""
    model = build_model("mlp:6-5-4-3:tanh", (6,), 3, dtype=torch.float64)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 5), (5, 4), (4, 3)]
    x = torch.randn(9, 6, dtype=torch.float64)
    h = torch.tanh(x @ linears[0].weight.T + linears[0].bias)
    h = torch.tanh(h @ linears[1].weight.T + linears[1].bias)
    torch.testing.assert_close(model(x), h @ linears[2].weight.T + linears[2].bias)


def test_mlp_batchnorm_sits_between_linear_and_activation() -> None:
    """`bn` normalises each hidden pre-activation by the batch mean and biased variance before the
    activation; reference: the batch-norm formula written by hand (training mode)."""
    model = build_model("mlp:3x1:leaky_relu:bn", (4,), 2, dtype=torch.float64)
    first, last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(10, 4, dtype=torch.float64)
    z = x @ first.weight.T + first.bias
    z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    expected = torch.where(z > 0, z, 0.01 * z) @ last.weight.T + last.bias
    torch.testing.assert_close(model(x), expected)


def test_mlp_dropout_is_identity_in_eval_and_zeroes_units_in_training() -> None:
    """`dropout=P` adds parameter-free Dropout(P) after hidden activations: in eval mode the model
    equals the same-seed model without dropout; in training mode it differs."""
    x = torch.randn(32, 6)
    plain = build_model("mlp:64x2", (6,), 2, seed=5)
    dropped = build_model("mlp:64x2:dropout=0.5", (6,), 2, seed=5)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    torch.testing.assert_close(dropped.eval()(x), plain(x))
    assert not torch.allclose(dropped.train()(x), plain(x))


def _lstm_layer_by_hand(x: torch.Tensor, lstm: nn.LSTM, layer: int) -> torch.Tensor:
    w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
    b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
    n, steps, _ = x.shape
    h = x.new_zeros(n, lstm.hidden_size)
    c = x.new_zeros(n, lstm.hidden_size)
    outputs = []
    for t in range(steps):
        i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def test_lstm_equals_hand_written_cell_equations_and_head_on_last_step() -> None:
    """lstm:HxL equals the LSTM cell equations (gates i, f, g, o) unrolled by hand through two
    layers with the model's own weights, then its linear head on the last step, in float64."""
    model = build_model("lstm:5x2", (12, 3), 2, dtype=torch.float64)
    lstm = next(m for m in model.modules() if isinstance(m, nn.LSTM))
    head = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert lstm.batch_first and lstm.num_layers == 2 and lstm.hidden_size == 5
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    h = _lstm_layer_by_hand(_lstm_layer_by_hand(x, lstm, 0), lstm, 1)
    torch.testing.assert_close(model(x), h[:, -1] @ head.weight.T + head.bias)


def test_rnn_equals_hand_written_tanh_recurrence() -> None:
    """rnn:H is h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), head on h_T; reference:
    that recurrence unrolled by hand with the model's weights."""
    model = build_model("rnn:4", (6, 2), 3, dtype=torch.float64)
    rnn = next(m for m in model.modules() if isinstance(m, nn.RNN))
    head = next(m for m in model.modules() if isinstance(m, nn.Linear))
    x = torch.randn(5, 6, 2, dtype=torch.float64)
    h = x.new_zeros(5, 4)
    for t in range(6):
        pre = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        h = torch.tanh(pre)
    torch.testing.assert_close(model(x), h @ head.weight.T + head.bias)


@pytest.mark.parametrize("spec", ["cnn:lenet", "cnn:resnet:4"])
def test_cnn_views_flat_inputs_through_image_shape(spec: str) -> None:
    """A flat (64,) input with image_shape (1, 8, 8) gives the same outputs as the same-seed model
    built for (1, 8, 8) images fed the reshaped batch; a flat (40,) input without image_shape is
    a 1-channel signal, like the same-seed model built for (1, 40). Convolutions are 2-D for
    images and 1-D for signals."""
    x = torch.randn(6, 64)
    flat = build_model(spec, (64,), 10, image_shape=(1, 8, 8), seed=2)
    image = build_model(spec, (1, 8, 8), 10, seed=2)
    torch.testing.assert_close(flat(x), image(x.reshape(6, 1, 8, 8)))
    assert any(isinstance(m, nn.Conv2d) for m in flat.modules())

    s = torch.randn(6, 40)
    signal = build_model(spec, (40,), 2, seed=2)
    channel = build_model(spec, (1, 40), 2, seed=2)
    torch.testing.assert_close(signal(s), channel(s.reshape(6, 1, 40)))
    assert any(isinstance(m, nn.Conv1d) for m in signal.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in signal.modules())


def test_cnn_architectures_are_the_documented_ones() -> None:
    """cnn:lenet builds a LeNet with the chosen activation; cnn:resnet:W a ResNet whose stem has W
    channels, residual blocks with BatchNorm, and a 4W-wide linear head."""
    lenet = build_model("cnn:lenet:tanh", (1, 28, 28), 10)
    assert isinstance(lenet, LeNet) and any(isinstance(m, nn.Tanh) for m in lenet.modules())
    resnet = build_model("cnn:resnet:8", (3, 16, 16), 10)
    assert isinstance(resnet, ResNet)
    assert resnet.stem[0].out_channels == 8 and resnet.head.in_features == 32
    assert len(resnet.blocks) == 3 and any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


def test_parameter_count_of_a_full_width_mlp() -> None:
    """mlp:64-128-10 has 64*128+128 + 128*10+10 parameters; reference: that arithmetic."""
    model = build_model("mlp:64-128-10", (64,), 10)
    assert count_parameters(model) == 64 * 128 + 128 + 128 * 10 + 10


def test_parameter_count_ignores_frozen_parameters() -> None:
    """count_parameters counts what gradient descent updates: frozen parameters are left out."""
    model = build_model("linear", (3,), 2)
    model.linear.bias.requires_grad_(False)
    assert count_parameters(model) == 6


@pytest.mark.parametrize(
    ("spec", "data"),
    [("mlp:16x2:bn", TABULAR), ("cnn:lenet", DIGITS), ("cnn:resnet:4", DIGITS), ("gru:4x2", SEQUENCE)],
)
def test_seed_fixes_parameters_and_leaves_global_rng_alone(spec: str, data: dict) -> None:
    """Same seed -> identical parameters, different seed -> different; the global RNG state is
    the same before and after build_model (reference: torch.get_rng_state)."""
    before = torch.get_rng_state()
    a = build_model(spec, data["input_shape"], 3, image_shape=data["image_shape"], seed=7)
    b = build_model(spec, data["input_shape"], 3, image_shape=data["image_shape"], seed=7)
    c = build_model(spec, data["input_shape"], 3, image_shape=data["image_shape"], seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_dtype_casts_parameters_and_outputs() -> None:
    """dtype=float64 gives float64 parameters and float64 outputs for float64 inputs."""
    model = build_model("cnn:resnet:4", (1, 8, 8), 3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_user_module_passes_through_cast_to_dtype() -> None:
    """A user's nn.Module is returned as the same object, cast to the requested dtype."""
    mine = nn.Sequential(nn.Linear(4, 3))
    assert build_model(mine, (4,), 3) is mine
    assert build_model(mine, (4,), 3, dtype=torch.float64) is mine
    assert mine[0].weight.dtype == torch.float64


@pytest.mark.parametrize(
    ("spec", "needle"),
    [(nn.Linear, "is a class; pass an instance"), (42, "spec string"), (None, "spec string")],
)
def test_things_that_are_not_models_are_rejected(spec: object, needle: str) -> None:
    """Only spec strings and nn.Module instances are models; others raise a one-line GdlabError."""
    with pytest.raises(GdlabError, match=needle):
        build_model(spec, (4,), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        (
            "mlp:64-128-10",
            dict(input_shape=(4,), output_dim=3),
            "model 'mlp:64-128-10' takes 64 inputs but the data has 4 features; "
            "use --model mlp:4-128-3:relu",
        ),
        (
            "mlp:4-8-10:tanh:bn",
            dict(input_shape=(4,), output_dim=3),
            "model 'mlp:4-8-10:tanh:bn' produces 10 outputs but the task needs 3; "
            "use --model mlp:4-8-3:tanh:bn",
        ),
        (
            "linear:4-1",
            dict(input_shape=(1, 28, 28), output_dim=10),
            "model 'linear:4-1' takes 4 inputs but the data has 784 features "
            "(input shape (1, 28, 28) flattened); use --model linear:784-10",
        ),
        (
            "lstm:64",
            dict(input_shape=(20,), output_dim=2),
            "model 'lstm:64' is a sequence model and needs samples of shape (T, F), but one sample "
            "has shape (20,); use sequence data or a model such as mlp:64x2 or cnn:lenet",
        ),
    ],
)
def test_spec_that_does_not_fit_the_data_names_the_fix(spec: str, kwargs: dict, message: str) -> None:
    """Width mismatches and sequence models on non-sequences raise one line with the fix;
    reference: the exact wording agreed in the brief."""
    with pytest.raises(GdlabError) as info:
        build_model(spec, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("spec", "kwargs", "needle"),
    [
        ("cnn:lenet", dict(input_shape=(60,), image_shape=(1, 8, 8)), "cannot view 60 features"),
        ("cnn:lenet", dict(input_shape=(64,), image_shape=(64,)), "image_shape must be (C, L) or (C, H, W)"),
        ("cnn:resnet", dict(input_shape=(1, 2, 3, 4)), "needs samples of shape (d,), (C, L) or (C, H, W)"),
        ("gru:4", dict(input_shape=(1, 28, 28)), "needs samples of shape (T, F)"),
        ("mlp:4x2", dict(input_shape=()), "input shape must be non-empty"),
        ("mlp:4x2", dict(input_shape=(0,)), "input shape must be non-empty with positive sizes"),
        ("mlp:4x2", dict(input_shape=(4,), output_dim=0), "output_dim must be a positive integer"),
        ("mlp:4x2", dict(input_shape=(4,), dtype=torch.int64), "floating torch dtype"),
        ("mlp:4x2", dict(input_shape=(4,), seed=1.5), "seed must be an integer"),
        ("mlp:4x2:rleu", dict(input_shape=(4,)), "did you mean 'relu'"),
    ],
)
def test_other_data_mismatches_raise_one_line_errors(spec: str, kwargs: dict, needle: str) -> None:
    """Shapes a model cannot take, bad output_dim, dtype or seed raise a one-line GdlabError."""
    kwargs = {"output_dim": 3, **kwargs}
    with pytest.raises(GdlabError) as info:
        build_model(spec, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)

"""The model zoo: nn.Module classes and `build_model`, which makes one from a spec and data shape.

Every model maps x: (N, *input_shape) to (N, output_dim): logits for classification, predictions
for regression. Parameters are initialised by PyTorch's default initialiser of each layer
(nn.Linear, nn.Conv*d, nn.RNN/LSTM/GRU, nn.BatchNorm*d), under a seed of the caller's choice.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from gdlab.errors import GdlabError
from gdlab.models.spec import RECURRENT_FAMILIES, ModelSpec, parse_model_spec

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
}

_RECURRENT_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for one of spec.ACTIVATIONS (PyTorch defaults, e.g. slope 0.01)."""
    return _ACTIVATIONS[name]()


class LinearModel(nn.Module):
    """Affine map on the flattened input: x (N, *input_shape) -> x.flatten(1) @ W.T + b, (N, out)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected net on the flattened input with widths (D0, ..., Dk): (N, D0) -> (N, Dk).

    Each hidden layer is Linear, then BatchNorm1d if `batchnorm`, then the activation, then
    Dropout(p) if `dropout` > 0; the last layer is a plain Linear.
    """

    def __init__(self, widths: tuple[int, ...], activation: str = "relu", batchnorm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_hidden = len(widths) - 2
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < n_hidden:
                if batchnorm:
                    layers.append(nn.BatchNorm1d(fan_out))
                layers.append(make_activation(activation))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def _conv_layers(spatial_dims: int) -> tuple[type[nn.Module], ...]:
    """(Conv, BatchNorm, MaxPool, AdaptiveAvgPool) classes for 1-D signals or 2-D images."""
    if spatial_dims == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d
    return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d


class LeNet(nn.Module):
    """LeNet-5 style net on images (C, H, W) or signals (C, L); output (N, output_dim).

    x is first reshaped to (N, *view_shape). Two 5-wide convolutions (6 and 16 channels, padded
    to keep the size) each followed by the activation and a 2-wide max pool (ceil mode, so a size
    never reaches zero), then adaptive average pooling to 5 per spatial axis, so the head is
    always 16*5*5 -> 120 -> 84 -> output_dim (16*5 for signals) whatever the input size.
    """

    def __init__(self, view_shape: tuple[int, ...], output_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.view_shape = tuple(view_shape)
        spatial_dims = len(view_shape) - 1
        conv, _, max_pool, adaptive_pool = _conv_layers(spatial_dims)
        self.features = nn.Sequential(
            conv(view_shape[0], 6, 5, padding=2), make_activation(activation), max_pool(2, ceil_mode=True),
            conv(6, 16, 5, padding=2), make_activation(activation), max_pool(2, ceil_mode=True),
            adaptive_pool(5),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5**spatial_dims, 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.view_shape)
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Residual block: relu(bn(conv3(relu(bn(conv3(x))))) + shortcut(x)), 1-D or 2-D.

    The shortcut is the identity, or a strided 1x1 convolution with BatchNorm when the stride or
    channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, spatial_dims: int) -> None:
        super().__init__()
        conv, batch_norm, _, _ = _conv_layers(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = batch_norm(out_channels)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False),
                                          batch_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet on images (C, H, W) or signals (C, L); output (N, output_dim).

    x is first reshaped to (N, *view_shape). A 3-wide stem convolution to `width` channels with
    BatchNorm and ReLU, three basic blocks (width, 2*width stride 2, 4*width stride 2), global
    average pooling and a linear head.
    """

    def __init__(self, view_shape: tuple[int, ...], output_dim: int, width: int = 16) -> None:
        super().__init__()
        self.view_shape = tuple(view_shape)
        spatial_dims = len(view_shape) - 1
        conv, batch_norm, _, adaptive_pool = _conv_layers(spatial_dims)
        self.stem = nn.Sequential(conv(view_shape[0], width, 3, padding=1, bias=False), batch_norm(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(
            BasicBlock(width, width, 1, spatial_dims),
            BasicBlock(width, 2 * width, 2, spatial_dims),
            BasicBlock(2 * width, 4 * width, 2, spatial_dims),
        )
        self.pool = adaptive_pool(1)
        self.head = nn.Linear(4 * width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.view_shape)
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


class RecurrentNet(nn.Module):
    """batch_first RNN, LSTM or GRU on x (N, T, F), then a linear head on the last step's output
    of the top layer: (N, T, F) -> (N, output_dim)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int,
                 output_dim: int) -> None:
        super().__init__()
        self.rnn = _RECURRENT_CELLS[cell](input_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (parameters with requires_grad) in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(
    spec: str | ModelSpec | nn.Module, input_shape: tuple[int, ...], output_dim: int, *, seed: int = 0,
    image_shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build the model `spec` for samples of shape `input_shape` and `output_dim` outputs.

    input_shape: one sample's shape without N, (d,) for tabular data, (T, F) for sequences,
    (C, L) or (C, H, W) for signals and images. The model maps (N, *input_shape) to
    (N, output_dim). image_shape: (C, H, W) or (C, L) through which a CNN views flat (d,) inputs;
    ignored by other families. Parameters are PyTorch's default initialisation of each layer,
    drawn under torch.manual_seed(seed) inside torch.random.fork_rng, so the same seed gives the
    same parameters and the caller's global RNG state is untouched; then cast to `dtype`.
    A user's nn.Module is returned as is, cast to `dtype`. Raises GdlabError, one line with the
    fix, when the spec is malformed or does not fit the data.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GdlabError(f"model dtype must be a floating torch dtype such as torch.float32, got {dtype}")
    if isinstance(spec, nn.Module):
        return spec.to(dtype=dtype)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        raise GdlabError(f"model {spec.__name__} is a class; pass an instance such as {spec.__name__}(...)")
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    elif not isinstance(spec, ModelSpec):
        raise GdlabError(f"model must be a spec string such as 'mlp:64x2' or a torch.nn.Module, "
                         f"got {type(spec).__name__}")
    input_shape = _checked_shape(spec, input_shape)
    output_dim = _checked_output_dim(spec, output_dim)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise GdlabError(f"model seed must be an integer, got {seed!r}") from None
    recurrent = spec.family in RECURRENT_FAMILIES
    make = _recurrent if recurrent else _cnn if spec.family == "cnn" else _fully_connected
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make(spec, input_shape, output_dim, image_shape)
    return model.to(dtype=dtype)


def _int_tuple(values: object) -> tuple[int, ...] | None:
    """`values` as a tuple of integers, or None when it is not an iterable of integers."""
    try:
        return tuple(operator.index(s) for s in values)
    except TypeError:
        return None


def _checked_shape(spec: ModelSpec, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = _int_tuple(input_shape)
    if shape is None:
        raise GdlabError(f"model '{spec.text}': input_shape must be a tuple of integers, got {input_shape!r}")
    if not shape or any(s <= 0 for s in shape):
        raise GdlabError(f"model '{spec.text}': one sample's input shape must be non-empty with positive "
                         f"sizes, got {shape}; reshape X to (N, d) for scalar features")
    return shape


def _checked_output_dim(spec: ModelSpec, output_dim: int) -> int:
    try:
        value = operator.index(output_dim)
    except TypeError:
        value = 0
    if value <= 0:
        raise GdlabError(f"model '{spec.text}': output_dim must be a positive integer, got {output_dim!r}")
    return value


def _fully_connected(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int,
                     image_shape: tuple[int, ...] | None) -> nn.Module:
    n_in = math.prod(input_shape)
    if spec.widths:
        _check_io(spec, n_in, output_dim, input_shape)
        widths = spec.widths
    else:
        widths = (n_in, *[spec.hidden_size or 0] * (spec.num_layers or 0), output_dim)
    if spec.family in ("linear", "logistic"):
        return LinearModel(widths[0], widths[-1])
    return MLP(widths, activation=spec.activation or "relu", batchnorm=spec.batchnorm, dropout=spec.dropout)


def _check_io(spec: ModelSpec, n_in: int, output_dim: int, input_shape: tuple[int, ...]) -> None:
    fix = spec.with_io(n_in, output_dim).canonical
    if spec.widths[0] != n_in:
        flattened = f" (input shape {input_shape} flattened)" if len(input_shape) > 1 else ""
        raise GdlabError(f"model '{spec.text}' takes {spec.widths[0]} inputs but the data has {n_in} "
                         f"features{flattened}; use --model {fix}")
    if spec.widths[-1] != output_dim:
        raise GdlabError(f"model '{spec.text}' produces {spec.widths[-1]} outputs but the task needs "
                         f"{output_dim}; use --model {fix}")


def _cnn(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int,
         image_shape: tuple[int, ...] | None) -> nn.Module:
    view_shape = _conv_view(spec, input_shape, image_shape)
    if spec.architecture == "lenet":
        return LeNet(view_shape, output_dim, activation=spec.activation or "relu")
    return ResNet(view_shape, output_dim, width=spec.channels or 16)


def _conv_view(spec: ModelSpec, input_shape: tuple[int, ...],
               image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The (C, L) or (C, H, W) shape a CNN reshapes each sample to."""
    if len(input_shape) in (2, 3):
        return input_shape
    if len(input_shape) != 1:
        raise GdlabError(f"model '{spec.text}' needs samples of shape (d,), (C, L) or (C, H, W), but one "
                         f"sample has shape {input_shape}; reshape the inputs to one of those")
    if image_shape is None:
        return (1, input_shape[0])
    view = _int_tuple(image_shape) or ()
    if len(view) not in (2, 3) or any(s <= 0 for s in view):
        raise GdlabError(f"model '{spec.text}': image_shape must be (C, L) or (C, H, W) with positive sizes, "
                         f"got {image_shape!r}")
    if math.prod(view) != input_shape[0]:
        raise GdlabError(f"model '{spec.text}' cannot view {input_shape[0]} features as image shape {view} "
                         f"({math.prod(view)} values); give an image_shape whose sizes multiply to "
                         f"{input_shape[0]}, or none to treat each sample as a 1-channel signal")
    return view


def _recurrent(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int,
               image_shape: tuple[int, ...] | None) -> nn.Module:
    if len(input_shape) != 2:
        raise GdlabError(f"model '{spec.text}' is a sequence model and needs samples of shape (T, F), but "
                         f"one sample has shape {input_shape}; use sequence data or a model such as "
                         "mlp:64x2 or cnn:lenet")
    return RecurrentNet(spec.family, input_shape[1], spec.hidden_size or 1, spec.num_layers or 1, output_dim)

"""Short model spec strings ("mlp:784-256-10:relu", "lstm:64x2", ...) parsed into a ModelSpec."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from gdlab.errors import GdlabError, did_you_mean, unknown_name

MODEL_FAMILIES: dict[str, str] = {
    "linear": "linear[:IN-OUT]: affine map W x + b on the flattened input "
    "(linear regression; softmax regression with cross_entropy)",
    "logistic": "logistic[:IN-OUT]: the same affine map producing logits "
    "(logistic regression; softmax regression for several classes)",
    "mlp": "mlp:D0-D1-...-Dk or mlp:WxL, then [:ACT][:bn][:dropout=P]: fully connected net on the "
    "flattened input; ACT in relu (default), tanh, sigmoid, leaky_relu, gelu",
    "cnn": "cnn:lenet[:ACT] or cnn:resnet[:WIDTH]: convolutional net on images (C, H, W) or "
    "1-D signals (C, L); flat inputs are viewed as the data's image shape",
    "rnn": "rnn:H or rnn:HxL: Elman RNN (tanh), hidden size H, L layers, on sequences (T, F); "
    "linear head on the last step",
    "lstm": "lstm:H or lstm:HxL: LSTM, hidden size H, L layers, on sequences (T, F); "
    "linear head on the last step",
    "gru": "gru:H or gru:HxL: GRU, hidden size H, L layers, on sequences (T, F); "
    "linear head on the last step",
}

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu")
CNN_ARCHITECTURES: tuple[str, ...] = ("lenet", "resnet")
RECURRENT_FAMILIES: tuple[str, ...] = ("rnn", "lstm", "gru")
DEFAULT_ACTIVATION = "relu"
DEFAULT_RESNET_WIDTH = 16

_WIDTH_BY_DEPTH = re.compile(r"^\s*([^x]+?)\s*x\s*([^x]+?)\s*$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; `build_model` turns it into an nn.Module for a given data shape.

    family: one of MODEL_FAMILIES. text: the string as the user wrote it (used in messages).
    widths: linear/logistic (IN, OUT) or mlp (D0, ..., Dk) as written; () means infer the input
    and output widths from the data. hidden_size / num_layers: mlp `WxL` (width W, L hidden
    layers) or the recurrent hidden size H and layer count L. activation: mlp and cnn:lenet.
    batchnorm / dropout: mlp only. architecture: cnn only (lenet | resnet). channels: the
    resnet's base width.
    """

    family: str
    text: str
    widths: tuple[int, ...] = ()
    hidden_size: int | None = None
    num_layers: int | None = None
    activation: str | None = None
    batchnorm: bool = False
    dropout: float = 0.0
    architecture: str | None = None
    channels: int | None = None

    @property
    def canonical(self) -> str:
        """The spec in normal form, defaults written out (e.g. "mlp:64x2:relu")."""
        if self.family in ("linear", "logistic"):
            return self.family + (f":{_join(self.widths)}" if self.widths else "")
        if self.family == "mlp":
            parts = ["mlp", _join(self.widths) if self.widths else f"{self.hidden_size}x{self.num_layers}"]
            parts.append(str(self.activation))
            if self.batchnorm:
                parts.append("bn")
            if self.dropout:
                parts.append(f"dropout={self.dropout:g}")
            return ":".join(parts)
        if self.family == "cnn":
            extra = self.activation if self.architecture == "lenet" else str(self.channels)
            return f"cnn:{self.architecture}:{extra}"
        return f"{self.family}:{self.hidden_size}x{self.num_layers}"

    def with_io(self, n_in: int, n_out: int) -> "ModelSpec":
        """This spec with its first and last written widths replaced by `n_in` and `n_out`."""
        if not self.widths:
            return self
        return replace(self, widths=(n_in, *self.widths[1:-1], n_out))


def parse_model_spec(text: str) -> ModelSpec:
    """Parse a model spec string (grammar in MODEL_FAMILIES; family case-insensitive).

    Raises GdlabError, one line naming the spec, the problem and the fix, on bad syntax: unknown
    family, activation or option, non-integer or non-positive widths, dropout outside [0, 1).
    Whether the widths fit the data is checked later, by `build_model`.
    """
    if not isinstance(text, str):
        raise GdlabError(f"model spec must be a string such as 'mlp:64x2', got {type(text).__name__}")
    parts = [p.strip() for p in text.strip().lower().split(":")]
    family, args = parts[0], parts[1:]
    if not family:
        raise GdlabError(f"model spec '{text}' is empty; give a family such as 'mlp:64x2' or 'linear'")
    if family not in MODEL_FAMILIES:
        raise _error(text, str(unknown_name("model family", family, MODEL_FAMILIES)))
    if family in ("linear", "logistic"):
        return _parse_affine(text, family, args)
    if family == "mlp":
        return _parse_mlp(text, args)
    if family == "cnn":
        return _parse_cnn(text, args)
    return _parse_recurrent(text, family, args)


def _join(widths: tuple[int, ...]) -> str:
    return "-".join(str(w) for w in widths)


def _error(text: str, problem: str) -> GdlabError:
    return GdlabError(f"model '{text}': {problem}")


def _positive_int(text: str, token: str, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise _error(text, f"{what} '{token}' is not an integer; write a positive whole number") from None
    if value <= 0:
        raise _error(text, f"{what} must be positive, got {value}; use a whole number >= 1")
    return value


def _width_list(text: str, token: str) -> tuple[int, ...]:
    return tuple(_positive_int(text, w.strip(), "width") for w in token.split("-"))


def _size_by_depth(text: str, token: str, size_name: str) -> tuple[int, int] | None:
    """Parse "WxL" into (W, L); None if `token` has no 'x'."""
    match = _WIDTH_BY_DEPTH.match(token)
    if match is None:
        return None
    return _positive_int(text, match.group(1), size_name), _positive_int(text, match.group(2), "layer count")


def _no_more(text: str, family: str, extra: list[str], usage: str) -> None:
    if extra:
        raise _error(text, f"unexpected option '{extra[0]}' for {family}; use {usage}")


def _parse_affine(text: str, family: str, args: list[str]) -> ModelSpec:
    usage = f"{family} or {family}:IN-OUT"
    if not args:
        return ModelSpec(family=family, text=text)
    _no_more(text, family, args[1:], usage)
    widths = _width_list(text, args[0])
    if len(widths) != 2:
        raise _error(text, f"{family} takes exactly two widths IN-OUT, got {len(widths)}; use {usage}")
    return ModelSpec(family=family, text=text, widths=widths)


def _parse_activation(text: str, token: str) -> str:
    if token not in ACTIVATIONS:
        raise _error(text, str(unknown_name("activation", token, ACTIVATIONS)))
    return token


def _parse_mlp(text: str, args: list[str]) -> ModelSpec:
    usage = "mlp:D0-D1-...-Dk or mlp:WxL, optionally followed by :ACT, :bn, :dropout=P"
    if not args or not args[0]:
        raise _error(text, f"mlp needs its widths; use {usage} (e.g. mlp:64x2)")
    widths: tuple[int, ...] = ()
    hidden_size = num_layers = None
    by_depth = _size_by_depth(text, args[0], "width")
    if by_depth is not None:
        hidden_size, num_layers = by_depth
    else:
        widths = _width_list(text, args[0])
        if len(widths) == 1:
            # A lone width cannot be a full D0-...-Dk list, so it reads as one hidden layer.
            hidden_size, num_layers, widths = widths[0], 1, ()

    activation, batchnorm, dropout = None, False, None
    for option in args[1:]:
        if option == "bn":
            if batchnorm:
                raise _error(text, "option 'bn' is given twice; give it once")
            batchnorm = True
        elif option.split("=")[0].strip() == "dropout":
            if dropout is not None:
                raise _error(text, "option 'dropout' is given twice; give it once")
            dropout = _parse_dropout(text, option)
        elif option in ACTIVATIONS:
            if activation is not None:
                raise _error(text, f"two activations '{activation}' and '{option}'; give one")
            activation = option
        else:
            hint = did_you_mean(option, (*ACTIVATIONS, "bn", "dropout"))
            raise _error(text, f"unknown activation or option '{option}'{hint}; choose an activation "
                         f"({', '.join(ACTIVATIONS)}), bn or dropout=P")
    return ModelSpec(family="mlp", text=text, widths=widths, hidden_size=hidden_size, num_layers=num_layers,
                     activation=activation or DEFAULT_ACTIVATION, batchnorm=batchnorm, dropout=dropout or 0.0)


def _parse_dropout(text: str, option: str) -> float:
    _, _, value = option.partition("=")
    try:
        p = float(value)
    except ValueError:
        raise _error(text, f"dropout needs a probability, as in dropout=0.1, got '{option}'") from None
    if not (math.isfinite(p) and 0.0 <= p < 1.0):
        raise _error(text, f"dropout probability must be in [0, 1), got {value.strip()}; "
                     "use e.g. dropout=0.1")
    return p


def _parse_cnn(text: str, args: list[str]) -> ModelSpec:
    usage = "cnn:lenet[:ACT] or cnn:resnet[:WIDTH]"
    if not args or not args[0]:
        raise _error(text, f"cnn needs an architecture; use {usage}")
    architecture = args[0]
    if architecture not in CNN_ARCHITECTURES:
        raise _error(text, str(unknown_name("cnn architecture", architecture, CNN_ARCHITECTURES)))
    _no_more(text, f"cnn:{architecture}", args[2:], usage)
    if architecture == "lenet":
        activation = _parse_activation(text, args[1]) if len(args) > 1 else DEFAULT_ACTIVATION
        return ModelSpec(family="cnn", text=text, architecture="lenet", activation=activation)
    channels = _positive_int(text, args[1], "resnet width") if len(args) > 1 else DEFAULT_RESNET_WIDTH
    return ModelSpec(family="cnn", text=text, architecture="resnet", channels=channels)


def _parse_recurrent(text: str, family: str, args: list[str]) -> ModelSpec:
    usage = f"{family}:H or {family}:HxL (hidden size H, L layers), e.g. {family}:64x2"
    if not args or not args[0]:
        raise _error(text, f"{family} needs a hidden size; use {usage}")
    _no_more(text, family, args[1:], usage)
    by_depth = _size_by_depth(text, args[0], "hidden size")
    if by_depth is None:
        hidden_size, num_layers = _positive_int(text, args[0], "hidden size"), 1
    else:
        hidden_size, num_layers = by_depth
    return ModelSpec(family=family, text=text, hidden_size=hidden_size, num_layers=num_layers)

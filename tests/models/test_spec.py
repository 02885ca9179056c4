"""Tests for gdlab.models.spec: parsing model spec strings and their error messages."""

from __future__ import annotations

import pytest

from gdlab.errors import GdlabError
from gdlab.models import MODEL_FAMILIES, ModelSpec, parse_model_spec
from gdlab.models.spec import ACTIVATIONS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linear", dict(family="linear", widths=())),
        ("linear:4-3", dict(family="linear", widths=(4, 3))),
        ("LOGISTIC:4-1", dict(family="logistic", widths=(4, 1))),
        ("mlp:64-128-10", dict(family="mlp", widths=(64, 128, 10), activation="relu")),
        ("mlp:64x2", dict(family="mlp", widths=(), hidden_size=64, num_layers=2, activation="relu")),
        ("mlp:32", dict(family="mlp", hidden_size=32, num_layers=1)),
        ("MLP:8X3:GELU", dict(family="mlp", hidden_size=8, num_layers=3, activation="gelu")),
        (
            "mlp:16x3:tanh:bn:dropout=0.25",
            dict(activation="tanh", batchnorm=True, dropout=0.25),
        ),
        ("mlp:4-8-2:dropout=0:leaky_relu", dict(activation="leaky_relu", dropout=0.0)),
        ("cnn:lenet", dict(family="cnn", architecture="lenet", activation="relu")),
        ("cnn:lenet:tanh", dict(architecture="lenet", activation="tanh")),
        ("cnn:resnet", dict(architecture="resnet", channels=16)),
        ("cnn:resnet:8", dict(architecture="resnet", channels=8)),
        ("lstm:64", dict(family="lstm", hidden_size=64, num_layers=1)),
        ("lstm:64x2", dict(family="lstm", hidden_size=64, num_layers=2)),
        ("gru: 8 x 3", dict(family="gru", hidden_size=8, num_layers=3)),
        ("rnn:4", dict(family="rnn", hidden_size=4, num_layers=1)),
    ],
)
def test_valid_specs_parse_to_the_written_fields(text: str, expected: dict) -> None:
    """Each grammar form gives the fields it spells out; reference: the grammar in the brief."""
    spec = parse_model_spec(text)
    assert isinstance(spec, ModelSpec)
    assert spec.text == text
    for field, value in expected.items():
        assert getattr(spec, field) == value, field


@pytest.mark.parametrize(
    "text",
    ["linear", "logistic:4-2", "mlp:3-5-2", "mlp:16x3:tanh:bn:dropout=0.25", "cnn:lenet:gelu",
     "cnn:resnet:8", "lstm:64", "gru:8x3", "rnn:2x2"],
)
def test_canonical_form_parses_back_to_the_same_spec(text: str) -> None:
    """The canonical text is a fixed point of parsing: parse(canonical) has the same fields."""
    spec = parse_model_spec(text)
    again = parse_model_spec(spec.canonical)
    assert again == ModelSpec(**{**spec.__dict__, "text": spec.canonical})
    assert again.canonical == spec.canonical


def test_model_families_describe_every_family_on_one_line() -> None:
    """`gdlab list` shows one line per family: keys are the documented families, each line
    names its own syntax."""
    assert set(MODEL_FAMILIES) == {"linear", "logistic", "mlp", "cnn", "rnn", "lstm", "gru"}
    for family, line in MODEL_FAMILIES.items():
        assert line.startswith(family) and "\n" not in line


def test_activations_match_the_zoo() -> None:
    """Every activation the parser accepts can be built by the zoo."""
    from gdlab.models.zoo import make_activation

    for name in ACTIVATIONS:
        make_activation(name)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        ("mpl:64-10", "did you mean 'mlp'"),
        ("lstn:64", "did you mean 'lstm'"),
        ("mlp", "needs its widths"),
        ("mlp:64-a-10", "width 'a' is not an integer"),
        ("mlp:64-1.5-10", "width '1.5' is not an integer"),
        ("mlp:64-0-10", "width must be positive"),
        ("mlp:64--10", "width '' is not an integer"),
        ("mlp:64x0", "layer count must be positive"),
        ("mlp:-3x2", "width must be positive"),
        ("mlp:64x2:rleu", "did you mean 'relu'"),
        ("mlp:64x2:tanhh", "did you mean 'tanh'"),
        ("mlp:64x2:relu:tanh", "two activations"),
        ("mlp:64x2:bn:bn", "'bn' is given twice"),
        ("mlp:64x2:dropout=1", "must be in [0, 1)"),
        ("mlp:64x2:dropout=-0.1", "must be in [0, 1)"),
        ("mlp:64x2:dropout=nan", "must be in [0, 1)"),
        ("mlp:64x2:dropout=half", "dropout needs a probability"),
        ("mlp:64x2:dropout", "dropout needs a probability"),
        ("linear:4", "exactly two widths"),
        ("linear:4-3:relu", "unexpected option 'relu'"),
        ("cnn", "needs an architecture"),
        ("cnn:lenat", "did you mean 'lenet'"),
        ("cnn:lenet:rellu", "did you mean 'relu'"),
        ("cnn:resnet:0", "resnet width must be positive"),
        ("cnn:resnet:wide", "resnet width 'wide' is not an integer"),
        ("cnn:resnet:8:bn", "unexpected option 'bn'"),
        ("lstm", "needs a hidden size"),
        ("lstm:0", "hidden size must be positive"),
        ("gru:64x0", "layer count must be positive"),
        ("rnn:64:relu", "unexpected option 'relu'"),
    ],
)
def test_bad_specs_raise_a_one_line_error_naming_spec_problem_and_fix(text: str, needle: str) -> None:
    """Malformed specs raise GdlabError whose single line names the spec and the problem;
    reference: the grammar and error rules in the brief."""
    with pytest.raises(GdlabError) as info:
        parse_model_spec(text)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert f"'{text}'" in message


def test_non_string_spec_is_rejected() -> None:
    """parse_model_spec only takes strings; anything else is a user mistake, not a crash."""
    with pytest.raises(GdlabError, match="must be a string"):
        parse_model_spec(64)  # type: ignore[arg-type]

"""Tests for gdlab.diagnostics.health: per-layer norms against hand float64 computations, and
vanishing/exploding detection on networks known to show them (deep sigmoid MLP, chaotic tanh RNN)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gdlab.diagnostics.health import (
    GradientHealthMonitor,
    HealthThresholds,
    gradient_norms,
    parameter_norms,
    snapshot,
    update_ratios,
    weight_names,
)
from gdlab.errors import GdlabError
from gdlab.optim.clipping import clip_gradients


def hand_norm(t: torch.Tensor) -> float:
    return math.sqrt(math.fsum(float(v) ** 2 for v in t.detach().flatten().tolist()))


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def test_gradient_and_parameter_norms_match_hand_float64() -> None:
    """Per-parameter ||grad|| and ||theta|| equal a hand float64 sum of squares, keyed by
    named_parameters(); parameters without a gradient are left out of gradient_norms."""
    model = small_model()
    model(torch.randn(5, 3)).pow(2).sum().backward()
    model[2].bias.grad = None
    grads = gradient_norms(model)
    assert list(grads) == ["0.weight", "0.bias", "2.weight"]
    params = dict(model.named_parameters())
    for name, value in grads.items():
        assert value == pytest.approx(hand_norm(params[name].grad), rel=1e-12)
    norms = parameter_norms(model)
    assert list(norms) == list(params)
    for name, value in norms.items():
        assert value == pytest.approx(hand_norm(params[name]), rel=1e-12)
    assert weight_names(model) == ["0.weight", "2.weight"]


def test_update_ratios_match_hand_float64() -> None:
    """||theta_new - theta_old|| / ||theta_old|| per parameter (reference: hand float64), with a
    zero old tensor giving 1.0 when it moved and 0.0 when it did not."""
    model = small_model()
    with torch.no_grad():
        model[0].bias.zero_()
        model[2].bias.zero_()
    before = snapshot(model)
    assert all(before[n] is not p and torch.equal(before[n], p) for n, p in model.named_parameters())
    with torch.no_grad():
        model[0].weight.add_(0.01 * torch.randn_like(model[0].weight))
        model[2].weight.mul_(1.5)
        model[0].bias.add_(0.3)
    ratios = update_ratios(before, model)
    params = dict(model.named_parameters())
    for name in ("0.weight", "2.weight"):
        expected = hand_norm(params[name].double() - before[name].double()) / hand_norm(before[name])
        assert ratios[name] == pytest.approx(expected, rel=1e-9)
    assert ratios["2.weight"] == pytest.approx(0.5, rel=1e-6)
    assert ratios["0.bias"] == 1.0
    assert ratios["2.bias"] == 0.0


def cross_entropy_gradient(model: nn.Module, seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 20, generator=gen)
    y = torch.randint(0, 4, (256,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return gradient_norms(model)


def test_deep_sigmoid_mlp_is_flagged_vanishing_at_its_first_layers() -> None:
    """An 8-layer sigmoid MLP (width 32, default init) has full-batch cross-entropy gradients that
    shrink by roughly sigmoid'(z) * ||W|| < 1 per layer toward the input, so its first weights fall
    below 1e-3 of the output layer's gradient (reference: "output"); the last layers do not."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width_in = 20
    for _ in range(7):
        layers += [nn.Linear(width_in, 32), nn.Sigmoid()]
        width_in = 32
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    monitor = GradientHealthMonitor.for_model(model, HealthThresholds(reference="output"))
    events = monitor.check(0, cross_entropy_gradient(model))
    flagged = [e["layer"] for e in events if e["kind"] == "vanishing"]
    weights = weight_names(model)
    assert weights[:3] == flagged[:3]
    assert not set(weights[-3:]) & set(flagged)
    assert flagged == weights[: len(flagged)]  # a prefix: vanishing grows toward the input
    assert not any(name.endswith("bias") for name in flagged)
    assert all(e["kind"] == "vanishing" and e["step"] == 0 for e in events)
    assert "output layer '14.weight'" in events[0]["detail"]


def test_shallow_relu_net_on_the_same_data_is_not_flagged() -> None:
    """A 2-hidden-layer ReLU net on the same data keeps gradient norms within a small factor of
    each other: no vanishing or exploding events with any reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    norms = cross_entropy_gradient(model)
    for reference in ("output", "max", "initial"):
        monitor = GradientHealthMonitor.for_model(model, HealthThresholds(reference=reference))
        assert monitor.check(0, norms) == []
    assert monitor.summary()["first_problem_step"] is None


class LastStepRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, batch_first=True)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0][:, -1])


def rnn_gradient(model: LastStepRNN, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    return gradient_norms(model)


def test_tanh_rnn_with_growing_recurrent_weights_is_flagged_exploding_and_clipping_fixes_it() -> None:
    """A tanh RNN on sequences of length 80: at default init (recurrent gain ~0.6) backprop through
    time contracts; scaling weight_hh by 2 then 4 makes the dynamics chaotic and the loss gradient
    grows by far more than 1e3 over its first observed norm (reference: growth vs first norm),
    so the recurrent tensors are flagged exploding and the readout is not. After
    clip_gradients(max_norm=1.0) every per-tensor norm is <= 1, so a fresh monitor with
    exploding_absolute=10 flags nothing, while the same monitor flags the unclipped gradient."""
    torch.manual_seed(0)
    model = LastStepRNN()
    x, y = torch.randn(64, 80, 4), torch.randn(64, 1)
    w0 = model.rnn.weight_hh_l0.detach().clone()
    monitor = GradientHealthMonitor.for_model(model)
    events = []
    for step, scale in enumerate((1.0, 2.0, 4.0)):
        with torch.no_grad():
            model.rnn.weight_hh_l0.copy_(scale * w0)
        events += monitor.check(step, rnn_gradient(model, x, y))
    exploding = {e["layer"] for e in events if e["kind"] == "exploding"}
    assert {"rnn.weight_hh_l0", "rnn.weight_ih_l0"} <= exploding
    assert "out.weight" not in exploding
    layer = monitor.summary()["layers"]["rnn.weight_hh_l0"]
    assert layer["last"] > 1e3 * layer["first"]

    ceiling = HealthThresholds(exploding_absolute=10.0)
    assert GradientHealthMonitor(ceiling).check(0, gradient_norms(model)) != []
    result = clip_gradients(model.parameters(), max_norm=1.0)
    assert result.clipped and result.norm_after == pytest.approx(1.0, rel=1e-5)
    clipped = gradient_norms(model)
    assert max(clipped.values()) <= 1.0 + 1e-6
    assert GradientHealthMonitor(ceiling).check(0, clipped) == []


def test_each_layer_and_kind_is_reported_once_and_counted() -> None:
    """Repeated problems give one event per (layer, kind), at the first step seen; the summary
    counts every step and first_problem_step is the first event's step (reference: hand tally)."""
    monitor = GradientHealthMonitor(weight_names=["w1", "w2"])
    assert monitor.check(0, {"w1": 1.0, "b1": 1.0, "w2": 1.0}) == []
    first = monitor.check(3, {"w1": 1e-4, "b1": 1e-9, "w2": 1.0})
    assert [(e["step"], e["kind"], e["layer"]) for e in first] == [(3, "vanishing", "w1")]
    assert monitor.check(4, {"w1": 1e-5, "b1": 1.0, "w2": 1.0}) == []
    second = monitor.check(5, {"w1": 1e-5, "b1": 2e3, "w2": 1.0})
    assert [(e["step"], e["kind"], e["layer"]) for e in second] == [(5, "exploding", "b1")]
    assert monitor.check(6, {"w1": 1e-5, "b1": 5e3, "w2": 1.0}) == []
    summary = monitor.summary()
    assert summary["first_problem_step"] == 3
    assert summary["flags"] == {"vanishing": ["w1"], "exploding": ["b1"]}
    assert summary["layers"]["w1"] == {
        "first": 1.0, "last": 1e-5, "min": 1e-5, "max": 1.0, "vanishing_steps": 4, "exploding_steps": 0,
    }
    assert summary["layers"]["b1"]["exploding_steps"] == 2
    assert summary["layers"]["b1"]["vanishing_steps"] == 0  # not a weight: never judged vanishing


def test_non_finite_norm_is_exploding_and_null_in_summary() -> None:
    """A NaN or inf gradient norm is reported as exploding even at the first check; the summary
    writes it as None (JSON null) and keeps min/max over finite norms."""
    monitor = GradientHealthMonitor()
    events = monitor.check(2, {"a": float("nan"), "b": 1.0})
    assert [(e["kind"], e["layer"]) for e in events] == [("exploding", "a")]
    monitor.check(3, {"a": 2.0, "b": float("inf")})
    summary = monitor.summary()
    assert summary["first_problem_step"] == 2
    assert summary["layers"]["a"]["first"] is None and summary["layers"]["a"]["min"] == 2.0
    assert summary["layers"]["b"]["last"] is None and summary["layers"]["b"]["max"] == 1.0
    assert summary["flags"]["exploding"] == ["a", "b"]


def test_references_max_and_initial() -> None:
    """"max" compares with the largest weight gradient at the step; "initial" with the tensor's
    own first norm (reference: the threshold arithmetic by hand)."""
    by_max = GradientHealthMonitor(HealthThresholds(reference="max", vanishing_ratio=0.01))
    events = by_max.check(0, {"w1": 0.5, "w2": 100.0, "w3": 2.0})
    assert [e["layer"] for e in events] == ["w1"]
    assert "largest weight gradient 'w2'" in events[0]["detail"]

    by_initial = GradientHealthMonitor(HealthThresholds(reference="initial", vanishing_ratio=0.01))
    assert by_initial.check(0, {"w1": 0.5, "w2": 100.0}) == []
    assert by_initial.check(1, {"w1": 0.006, "w2": 0.9}) == [
        {
            "step": 1,
            "kind": "vanishing",
            "layer": "w2",
            "detail": "gradient norm 0.9 is 0.009 of its first norm (100); threshold 0.01",
        }
    ]


def test_zero_output_gradient_does_not_flag_vanishing() -> None:
    """With a zero reference norm there is no scale, so nothing is judged vanishing."""
    monitor = GradientHealthMonitor()
    assert monitor.check(0, {"w1": 0.0, "w2": 0.0}) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vanishing_ratio": 0.0}, "vanishing_ratio"),
        ({"vanishing_ratio": 1.5}, "vanishing_ratio"),
        ({"reference": "outptu"}, "did you mean 'output'"),
        ({"exploding_factor": 1.0}, "exploding_factor"),
        ({"exploding_factor": float("inf")}, "exploding_factor"),
        ({"exploding_absolute": 0.0}, "exploding_absolute"),
        ({"exploding_absolute": float("nan")}, "exploding_absolute"),
        ({"vanishing_ratio": "0.1"}, "vanishing_ratio"),
    ],
)
def test_bad_thresholds_raise_gdlab_error(kwargs, message) -> None:
    """Out-of-range thresholds or an unknown reference are one-line user errors."""
    with pytest.raises(GdlabError, match=message) as info:
        HealthThresholds(**kwargs)
    assert "\n" not in str(info.value)

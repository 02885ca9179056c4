"""The loop's non-finite guard, clipping and schedules, against hand computations and theorems."""

import math

import numpy as np
import pytest
import torch

from gdlab.config import RunConfig
from gdlab.data import load_task
from gdlab.diagnostics.summary import sharpness_rows
from gdlab.engine.loop import NonFiniteError
from gdlab.optim.schedules import schedule_lrs
from gdlab.run import run


def cfg(**kw):
    return RunConfig.from_dict(kw)


def linreg_lambda_max():
    data = load_task("linreg", seed=0, dtype=torch.float64)
    A = np.c_[data.X_train.numpy(), np.ones(data.n_train)]
    return float(np.linalg.eigvalsh(A.T @ A / data.n_train).max()), data


def first_nonfinite_step(lr, steps):
    """Plain float32 GD on the same linear regression by hand: the first step whose loss or
    gradient is not finite."""
    data = load_task("linreg", seed=0)
    run0 = run(cfg(task="linreg", steps=0))
    w = run0.model.linear.weight.detach().clone()
    b = run0.model.linear.bias.detach().clone()
    X, y = data.X_train, data.y_train
    for s in range(steps):
        r = X @ w.T + b - y
        loss = 0.5 * (r**2).sum(dim=1).mean()
        gw, gb = (r.T @ X) / X.shape[0], r.mean(dim=0)
        if not (torch.isfinite(loss) and torch.isfinite(gw).all() and torch.isfinite(gb).all()):
            return s
        w, b = w - lr * gw, b - lr * gb
    return None


def test_policy_stop_halts_at_the_first_nonfinite_step_with_finite_parameters():
    """With policy stop (and the loss-growth rule off) the run stops at exactly the step where a
    hand-written float32 GD first produces a non-finite loss, and keeps the last good parameters."""
    lr = 50.0
    expected = first_nonfinite_step(lr, 500)
    assert expected is not None
    result = run(cfg(task="linreg", lr=lr, steps=500, nonfinite_policy="stop", divergence_factor=1e300))
    assert result.final["status"] == "diverged" and result.final["stop_reason"] == "nonfinite"
    event = next(e for e in result.events if e["kind"] == "nonfinite")
    assert event["step"] == expected
    assert result.final["step"] == expected - 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_rollback_restores_parameters_cuts_lr_and_finishes():
    """A huge learning rate forces NaN; the rollback policy records nonfinite + rollback events,
    halves lr each time, and ends with finite parameters and a finite loss."""
    result = run(cfg(task="linreg", lr=50.0, steps=300, divergence_factor=1e300))
    kinds = [e["kind"] for e in result.events]
    assert "nonfinite" in kinds and "rollback" in kinds
    n = result.final["rollbacks"]
    assert n >= 1 and result.final["final_lr"] == pytest.approx(50.0 * 0.5**n)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert math.isfinite(result.final["train_loss"]) and result.final["status"] == "completed"


def test_rollback_gives_up_after_max_rollbacks():
    """With max_rollbacks = 2 and a step size far beyond stability the run stops as diverged."""
    result = run(cfg(task="linreg", lr=1e4, steps=300, max_rollbacks=2, rollback_lr_factor=0.9))
    assert result.final["status"] == "diverged" and result.final["rollbacks"] == 2


def test_policy_raise_raises():
    """Policy raise surfaces divergence as NonFiniteError."""
    with pytest.raises(NonFiniteError):
        run(cfg(task="linreg", lr=50.0, steps=300, nonfinite_policy="raise"))


@pytest.mark.parametrize("factor, converges", [(1.9, True), (2.1, False)])
def test_gd_on_a_quadratic_is_stable_iff_lr_below_two_over_lambda(factor, converges):
    """Linear least squares is a quadratic with Hessian X^T X / N: constant-step GD converges for
    lr = 1.9/lambda_max and diverges for lr = 2.1/lambda_max, and the tracked sharpness says which
    side of 2/lr each run is on (sharpness equals lambda_max from numpy.linalg.eigvalsh)."""
    lam, _ = linreg_lambda_max()
    result = run(cfg(task="linreg", lr=factor / lam, steps=400, dtype="float64", nonfinite_policy="stop",
                     sharpness_every=50, sharpness_iters=5))
    rows = sharpness_rows(result.to_record()["diagnostics"])
    assert rows and all(r["sharpness"] == pytest.approx(lam, rel=1e-8) for r in rows)
    if converges:
        assert result.final["status"] == "completed" and result.final["grad_norm"] < 1e-6
        assert all(r["side"] == "stable" for r in rows)
        assert not any(e["kind"] == "sharpness_above_2_over_lr" for e in result.events)
    else:
        assert result.final["status"] == "diverged"
        assert all(r["side"] == "unstable" for r in rows)
        assert any(e["kind"] == "sharpness_above_2_over_lr" for e in result.events)


def test_clipping_bounds_the_applied_gradient_and_is_counted():
    """Clip by global norm: every clipped step is counted; the factor recorded in the history
    equals max_norm / ||g|| when ||g|| > max_norm (checked against the logged gradient norm)."""
    result = run(cfg(task="linreg", lr=0.1, steps=50, clip_norm=1.0, log_every=1))
    clipped = [r for r in result.history if r.get("clip_factor", 1.0) < 1.0]
    assert clipped and result.final["clipping"]["clipped_steps"] == len(clipped)
    for r in clipped:
        assert r["clip_factor"] == pytest.approx(1.0 / r["grad_norm"], rel=1e-6)
    for r in result.history:
        if "clip_factor" in r and r["grad_norm"] <= 1.0:
            assert r["clip_factor"] == 1.0
    assert any(e["kind"] == "clip" for e in result.events)


def test_clipping_tames_an_exploding_recurrent_network():
    """An Elman RNN with large recurrent weights on long sequences blows up under plain GD (the
    run diverges with policy stop); the same run with clip_norm=1 clips and stays finite."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(2, 32, batch_first=True)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn
            self.head = torch.nn.Linear(32, 1)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(6.0)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    base = dict(task="adding", n_samples=200, lr=0.5, steps=40, nonfinite_policy="stop",
                divergence_factor=100.0, health_every=1)
    torch.manual_seed(0)
    plain = run(cfg(**base), model=Net())
    torch.manual_seed(0)
    clipped = run(cfg(**base, clip_norm=1.0), model=Net())
    assert plain.final["status"] == "diverged"
    assert clipped.final["status"] == "completed" and math.isfinite(clipped.final["train_loss"])
    assert clipped.final["clipping"]["clipped_steps"] > 0
    assert clipped.final["train_loss"] <= 1.01 * clipped.history[0]["train_loss"]


def test_schedule_drives_the_logged_learning_rate():
    """The lr column of the history follows the schedule exactly (warmup then cosine)."""
    text = "warmup:5+cosine"
    result = run(cfg(task="iris", lr=0.2, steps=30, schedule=text, log_every=1))
    expected = schedule_lrs(text, 0.2, 30, total_steps=30)
    logged = [r["lr"] for r in result.history[:30]]
    assert logged == pytest.approx(expected, rel=1e-12)


def test_deep_sigmoid_network_is_flagged_vanishing_at_its_first_layers():
    """Training an 8-layer sigmoid MLP on digits with health tracking flags its first weight
    matrices as vanishing (relative to the output layer) and not its last one."""
    result = run(cfg(task="digits", model="mlp:64x8:sigmoid", lr=0.5, steps=5, health_every=1))
    flagged = {e["layer"] for e in result.events if e["kind"] == "vanishing"}
    assert "layers.0.weight" in flagged and "layers.16.weight" not in flagged
    health = result.final["health"]
    assert health["first_problem_step"] == 0
    series = result.to_record()["diagnostics"]
    assert len(series["grad_norm/layers.0.weight"]) == 5
    assert "update_ratio/layers.0.weight" in series and "param_norm/layers.16.weight" in series


@pytest.mark.parametrize("task, model", [("digits", "cnn:lenet"), ("adding", "lstm:8x1")])
def test_health_and_sharpness_tracking_work_for_cnn_and_lstm(task, model):
    """Gradient health and sharpness tracking run on convolutional and recurrent models: every
    parameter tensor gets a gradient-norm series, and the tracked sharpness equals an independent
    Lanczos run with more iterations at the initial parameters (same full-batch objective)."""
    from gdlab.diagnostics.hessian import sharpness
    from gdlab.optim import get_loss
    from gdlab.run import prepare

    config = cfg(task=task, model=model, n_samples=120, steps=2, lr=0.01, health_every=1,
                 sharpness_every=5, sharpness_iters=20, dtype="float64")
    prepared = prepare(config)
    prepared.model.eval()
    loss = "cross_entropy" if task == "digits" else "mse"
    ref = sharpness(prepared.model, get_loss(loss), prepared.data.X_train, prepared.data.y_train,
                    iters=40).values[0]
    result = run(config)
    series = result.to_record()["diagnostics"]
    names = [n for n, p in result.model.named_parameters()]
    assert all(len(series[f"grad_norm/{n}"]) == 2 for n in names)
    assert series["sharpness"][0]["value"] == pytest.approx(ref, rel=1e-6)


def test_stochastic_divergence_reference_is_the_full_objective_not_the_first_sample():
    """A stochastic run whose first sample happens to fit almost exactly (batch loss ~5e-6) is not
    stopped as diverged when later samples have ordinary losses: the divergence reference is the
    full-batch objective at step 0. Reference: the run's own first history record (train_loss)."""
    result = run(cfg(task="linreg", n_samples=1000, regime="stochastic", lr=0.01, max_epochs=2,
                     nonfinite_policy="stop"))
    assert result.final["status"] == "completed", result.events
    first = result.history[0]
    assert first["batch_loss"] < 1e-3 * first["train_loss"]  # the lucky first sample is there


def test_the_loop_driven_by_hand_equals_gdlab_train():
    """The one loop used directly (an objective, an EagerStepper over the user's optimizer, stop
    rules) records the same run as gdlab.train on the same module, data and settings."""
    import copy

    import gdlab
    from gdlab.data import Dataset
    from gdlab.engine import FullBatchObjective, StopRules, make_schedule, train_loop
    from gdlab.engine.steppers.eager import EagerStepper
    from gdlab.optim import get_loss

    torch.manual_seed(0)
    X = torch.randn(300, 5, dtype=torch.float64)
    y = X @ torch.randn(5, 1, dtype=torch.float64) + 0.1 * torch.randn(300, 1, dtype=torch.float64)
    data = Dataset("mine", X[:240], y[:240], X[240:], y[240:], task_type="regression")
    model = torch.nn.Linear(5, 1).double()
    reference = gdlab.train(copy.deepcopy(model), data, optimizer="momentum", lr=0.05, steps=60, clip_norm=0.5,
                            dtype="float64", eval_every=10, log_every=1, compile="off")
    objective = FullBatchObjective(model, get_loss("mse"), data.X_train, data.y_train)
    stepper = EagerStepper(objective, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                           make_schedule("full", data.n_train), clip_norm=0.5)
    out = train_loop(stepper, objective, data, StopRules(max_steps=60), eval_every=10)
    assert out.final["clipping"]["clipped_steps"] == reference.final["clipping"]["clipped_steps"] > 0
    assert [h["step"] for h in out.history] == [h["step"] for h in reference.history]
    for a, b in zip(reference.history, out.history):
        for key in ("train_loss", "grad_norm", "test_loss", "lr"):
            assert b[key] == (None if a[key] is None else pytest.approx(a[key], rel=1e-12)), (key, a["step"])

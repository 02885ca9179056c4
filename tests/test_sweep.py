"""Stacked sweeps: K copies trained as one stacked model equal K separate runs (float64, to
rounding), including copies that diverge or reach their target early; the choice between stacked
and sequential; grid and random searches through one sweep."""

import numpy as np
import pytest
import torch

from gdlab.config import RunConfig
from gdlab.engine.steppers.stacked import StackedForward, per_copy_loss
from gdlab.models import build_model
from gdlab.models.zoo import MLP
from gdlab.optim.losses import get_loss
from gdlab.store import RunStore
from gdlab.study.execute import run_study
from gdlab.study.spec import parse_study
from gdlab.sweep import run_sweep, sweep_configs
from gdlab.tune import search_learning_rate


def assert_stacked_equal(same_run, stacked, sequential):
    for a, b in zip(stacked, sequential):
        assert a.final["engine"]["path"] == "stacked"
        same_run(b, a, 1e-9)


def both(configs):
    return run_sweep(configs, stacked="on"), run_sweep(configs, stacked="off")


def test_full_batch_lr_grid_equals_separate_runs_including_the_diverging_ones(assert_same_run):
    """Eight learning rates for linear regression, half of them above 2/lambda_max: every copy's
    history, events, stopping step and final parameters equal its own run; the stable ones are
    not disturbed by the diverging ones."""
    base = RunConfig.from_dict(dict(task="linreg", steps=150, nonfinite_policy="stop", dtype="float64",
                                    eval_every=7, log_every=1, l2=0.01))
    configs = sweep_configs(base, lrs=list(np.geomspace(0.05, 3.0, 8)))
    stacked, sequential = both(configs)
    statuses = {r.final["status"] for r in sequential}
    assert statuses == {"completed", "diverged"}
    assert_stacked_equal(assert_same_run, stacked, sequential)


def test_minibatch_seeds_and_lrs_equal_separate_runs(assert_same_run):
    """Momentum on a digits MLP, mini-batches of 50 with a partial last batch, 2 seeds x 3 rates
    (each seed its own initialisation and sample order, the data fixed by data_seed)."""
    base = RunConfig.from_dict(dict(task="digits", model="mlp:64-12-10:tanh", optimizer="momentum",
                                    regime="minibatch", batch_size=50, max_epochs=2, nonfinite_policy="stop",
                                    dtype="float64", data_seed=3, eval_every=5, log_every=1))
    configs = sweep_configs(base, lrs=[0.01, 0.05, 0.2], seeds=[0, 1])
    stacked, sequential = both(configs)
    assert_stacked_equal(assert_same_run, stacked, sequential)


def test_stochastic_regression_with_different_seeds(assert_same_run):
    """Stochastic GD (B = 1, one sample per copy per step, each seed its own order) on linear
    regression with an mse loss: the per-copy targets keep their copy."""
    base = RunConfig.from_dict(dict(task="linreg", regime="stochastic", max_epochs=1, nonfinite_policy="stop",
                                    dtype="float64", data_seed=0, eval_every=9, log_every=1))
    configs = sweep_configs(base, lrs=[0.01, 0.1], seeds=[0, 1, 2])
    stacked, sequential = both(configs)
    assert_stacked_equal(assert_same_run, stacked, sequential)


def test_stochastic_logistic_with_schedule_and_loss_target(assert_same_run):
    """Stochastic GD (B = 1) on L2 logistic regression with a cosine schedule and a loss target
    reached at different evaluation points by different copies."""
    base = RunConfig.from_dict(dict(task="breast_cancer", model="logistic", regime="stochastic", max_epochs=1,
                                    schedule="cosine", nonfinite_policy="stop", dtype="float64", l2=1e-3,
                                    loss_tol=0.2, eval_every=40, log_every=7))
    configs = sweep_configs(base, lrs=[0.003, 0.03, 0.3])
    stacked, sequential = both(configs)
    assert any(r.final["status"] == "target_reached" for r in sequential)
    assert_stacked_equal(assert_same_run, stacked, sequential)


@pytest.mark.parametrize("loss,out_dim", [("mse", 3), ("mse", 1), ("cross_entropy", 4), ("bce", 1)])
def test_per_copy_loss_equals_the_loss_of_each_copy(loss, out_dim):
    """Reference: gdlab's own loss of copy k's outputs out[:, k] (batch-major layout)."""
    gen = torch.Generator().manual_seed(0)
    K, B = 3, 7
    out = torch.randn(B, K, out_dim, generator=gen, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(B, out_dim, generator=gen, dtype=torch.float64)
    else:
        y = torch.randint(0, max(out_dim, 2), (B,), generator=gen)
    values = per_copy_loss(get_loss(loss), out, y)
    per_copy_targets = torch.stack([y.roll(k, dims=0) for k in range(K)])
    own = per_copy_loss(get_loss(loss), out, per_copy_targets, per_copy=True)
    for k in range(K):
        assert float(values[k]) == pytest.approx(float(get_loss(loss)(out[:, k], y)), rel=1e-14)
        assert float(own[k]) == pytest.approx(float(get_loss(loss)(out[:, k], per_copy_targets[k])), rel=1e-14)


@pytest.mark.parametrize("layers", [(5, 2), (5, 8, 8, 2)])
def test_stacked_forward_equals_each_model(layers):
    """Shared input (one GEMM for the first layer, batched products after it) and one batch per
    copy (batched products throughout) both give each model's own forward pass."""
    torch.manual_seed(0)
    models = [MLP(layers, "sigmoid").double() for _ in range(3)]
    params = [torch.stack(ps) for ps in zip(*[list(m.parameters()) for m in models])]
    X = torch.randn(11, 5, dtype=torch.float64)
    out = StackedForward(models[0])(params, X, False)
    assert out.shape == (11, 3, layers[-1])
    for k, m in enumerate(models):
        torch.testing.assert_close(out[:, k], m(X))
    X_own = torch.randn(3, 11, 5, dtype=torch.float64)
    own = StackedForward(models[0])(params, X_own, True)
    for k, m in enumerate(models):
        torch.testing.assert_close(own[:, k], m(X_own[k]))


@pytest.mark.parametrize("spec", ["gru:6x1", "lstm:4x2", "rnn:5x2"])
def test_stacked_recurrent_forward_equals_each_model(spec):
    """A recurrent net's K copies, stepped through time by the cells' formulas, give each
    nn.GRU/LSTM/RNN model's own forward pass, for a shared input and for one batch per copy."""
    models = [build_model(spec, (9, 2), 3, seed=s, dtype=torch.float64) for s in range(3)]
    params = [torch.stack(ps) for ps in zip(*[list(m.parameters()) for m in models])]
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(5, 9, 2, generator=gen, dtype=torch.float64)
    X_own = torch.randn(3, 5, 9, 2, generator=gen, dtype=torch.float64)
    out, own = StackedForward(models[0])(params, X, False), StackedForward(models[0])(params, X_own, True)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[:, k], m(X), rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(own[:, k], m(X_own[k]), rtol=1e-13, atol=1e-14)


def test_stochastic_gru_seeds_and_lrs_equal_separate_runs(assert_same_run):
    """SGD on the sine GRU, one sequence per step, 2 seeds x 2 rates: each copy equals its own
    nn.GRU run."""
    base = RunConfig.from_dict(dict(task="sine", model="gru:4x1", n_samples=40, regime="stochastic", max_epochs=1,
                                    nonfinite_policy="stop", dtype="float64", data_seed=0, eval_every=10,
                                    log_every=3))
    stacked, sequential = both(sweep_configs(base, lrs=[0.01, 0.1], seeds=[0, 1]))
    assert_stacked_equal(assert_same_run, stacked, sequential)


def test_sweeps_that_cannot_stack_run_one_after_another_and_say_why():
    cnn = sweep_configs(RunConfig.from_dict(dict(task="digits", model="cnn:lenet", steps=3, nonfinite_policy="stop")),
                        lrs=[0.01, 0.1])
    results = run_sweep(cnn, stacked="on")
    assert all("sequential" in r.final["engine"]["sweep"] for r in results)
    assert "LeNet" in results[0].final["engine"]["sweep"]
    rollback = sweep_configs(RunConfig.from_dict(dict(task="linreg", steps=3)), lrs=[0.01, 0.1])
    assert "policy stop" in run_sweep(rollback)[0].final["engine"]["sweep"]
    differ = [RunConfig.from_dict(dict(task="linreg", steps=3, nonfinite_policy="stop")),
              RunConfig.from_dict(dict(task="linreg", steps=4, nonfinite_policy="stop"))]
    assert "differ in steps" in run_sweep(differ)[0].final["engine"]["sweep"]


def test_auto_runs_sequentially_when_stacking_measures_slower(monkeypatch):
    import gdlab.sweep as sweep

    monkeypatch.setattr(sweep, "_measure", lambda *a, **k: {"stacked": 1.0, "single": 0.01})
    configs = sweep_configs(RunConfig.from_dict(dict(task="linreg", steps=5, nonfinite_policy="stop")),
                            lrs=[0.01, 0.1, 0.2])
    results = run_sweep(configs)
    assert "not faster" in results[0].final["engine"]["sweep"]


@pytest.mark.parametrize("kind", ["grid", "random"])
def test_a_search_evaluated_as_one_sweep_tries_the_same_rates(kind):
    """Asking every grid/random trial before telling any changes nothing: the same rates, the
    same best as one-at-a-time evaluation."""
    f = lambda lr: (np.log10(lr) + 1.3) ** 2  # noqa: E731
    one = search_learning_rate(kind, 7, 1e-3, 1.0, lambda n, lr: f(lr), seed=4)
    calls = []

    def many(trials):
        calls.append(len(trials))
        return [f(lr) for _, lr in trials]

    batch = search_learning_rate(kind, 7, 1e-3, 1.0, lambda n, lr: f(lr), seed=4, evaluate_many=many)
    assert calls == [7]
    assert batch.trials == one.trials and batch.best_lr == one.best_lr


def test_a_study_tunes_with_stacked_sweeps(tmp_path, monkeypatch):
    """The study runner sends a grid's trials through one sweep: the stored tuning runs of a
    linear task were stacked (the measurement is pinned to favour stacking), the final seed runs
    were not."""
    import gdlab.sweep as sweep

    monkeypatch.setattr(sweep, "_measure", lambda *a, **k: {"stacked": 0.001, "single": 0.01})
    spec = parse_study({
        "name": "stacked", "workers": 1, "seeds": [0],
        "tuning": {"sampler": "grid", "trials": 4, "seed": 0},
        "tasks": [{"name": "lin", "task": "linreg", "budget": {"epochs": 40}, "target": {"train_loss": 0.6}}],
        "optimizers": [{"name": "gd", "optimizer": "gd", "regime": "full", "lr": {"low": 0.01, "high": 1.0}}],
    })
    run_study(spec, tmp_path / "s.db", workers=1)
    with RunStore(tmp_path / "s.db") as store:
        runs = store.runs(study="stacked")
    tune = [r for r in runs if r.phase == "tune"]
    assert len(tune) == 4
    assert {r.final["engine"]["path"] for r in tune} == {"stacked"}
    assert {r.final["engine"]["path"] for r in runs if r.phase == "final"} == {"eager"}


def test_stacked_copies_clip_by_their_own_norm(assert_same_run):
    """Clipping by norm on four copies of a digits MLP: each copy is clipped by its own gradient
    norm (a copy's clip factors, first-clip event and clipping summary equal its own run): the
    copies clip on different numbers of steps (20, 20, 11 and 4 of 20 in their own runs)."""
    base = RunConfig.from_dict(dict(task="digits", model="mlp:64-16-10:tanh", steps=20, nonfinite_policy="stop",
                                    dtype="float64", clip_norm=0.3, eval_every=5, log_every=1))
    configs = sweep_configs(base, lrs=[0.01, 0.1, 1.0, 3.0])
    stacked, sequential = both(configs)
    clipped = [r.final["clipping"]["clipped_steps"] for r in sequential]
    assert len(set(clipped)) > 1
    assert_stacked_equal(assert_same_run, stacked, sequential)


def test_a_time_budget_holds_for_each_stacked_copys_share():
    """A stacked copy's training time is its share (stacked time / K), and a time budget stops
    every copy once that share reaches it: the same rule a separate run follows for its own time."""
    base = RunConfig.from_dict(dict(task="linreg", time_budget_s=0.2, nonfinite_policy="stop", dtype="float64"))
    results = run_sweep(sweep_configs(base, lrs=[0.01, 0.05, 0.1]), stacked="on")
    assert {r.final["engine"]["path"] for r in results} == {"stacked"}
    assert {(r.final["status"], r.final["stop_reason"]) for r in results} == {("time_budget", "time_budget")}
    assert len({r.final["step"] for r in results}) == 1 and results[0].final["step"] > 0
    for r in results:
        assert r.final["wall_time_s"] >= 0.2
        assert r.history[-1]["step"] == r.final["step"]

"""The training loop and runner against closed forms, scikit-learn and torch.optim by hand."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from gdlab.config import RunConfig
from gdlab.data import load_task
from gdlab.run import RunResult, prepare, run, save_run
from gdlab.errors import GdlabError
from gdlab.optim import get_loss


def cfg(**kw):
    return RunConfig.from_dict(kw)


def test_gd_on_linear_regression_reaches_least_squares():
    """Full-batch GD on y = 3x + 2 + noise converges to numpy.linalg.lstsq's solution to 1e-6."""
    result = run(cfg(task="linreg", model="linear", optimizer="gd", lr=0.5, steps=3000,
                     grad_tol=1e-12, dtype="float64"))
    data = load_task("linreg", seed=0, dtype=torch.float64)
    A = np.c_[data.X_train.numpy(), np.ones(data.n_train)]
    coef, *_ = np.linalg.lstsq(A, data.y_train.numpy(), rcond=None)
    model = result.model
    got = np.r_[model.linear.weight.detach().numpy().ravel(), model.linear.bias.detach().numpy()] \
        if hasattr(model, "linear") else np.r_[[p.detach().numpy().ravel() for p in model.parameters()]].ravel()
    assert np.allclose(got, coef.ravel(), atol=1e-6, rtol=0)
    assert result.final["status"] == "stopped" and result.final["stop_reason"] == "grad_tol"
    assert abs(coef[0, 0] - 3) < 0.5 and abs(coef[1, 0] - 2) < 0.5


def test_l2_logistic_regression_matches_scikit_learn_objective():
    """Full-batch GD with L2 on breast_cancer reaches scikit-learn LogisticRegression's objective
    value to 1e-6 relative. sklearn minimises C*sum(logloss) + |w|^2/2, i.e. ours with
    l2 = 1/(C*N) and an unpenalised intercept."""
    C = 0.1
    data = load_task("breast_cancer", seed=0, dtype=torch.float64)
    N = data.n_train
    l2 = 1.0 / (C * N)
    result = run(cfg(task="breast_cancer", model="logistic", loss="bce", optimizer="gd", lr=1.0,
                     l2=l2, steps=20000, grad_tol=1e-9, dtype="float64"))
    X, y = data.X_train.numpy(), data.y_train.numpy()
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(X, y)
    z = X @ sk.coef_.ravel() + sk.intercept_[0]
    ref = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum(sk.coef_**2)
    assert abs(result.final["train_loss"] - ref) <= 1e-6 * ref


UPDATE_RULES = [
    ("gd", torch.optim.SGD, {}),
    ("momentum", torch.optim.SGD, {"momentum": 0.9}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8}),
    ("adamw", torch.optim.AdamW, {"weight_decay": 0.01}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-8}),
    ("adagrad", torch.optim.Adagrad, {}),
]


@pytest.mark.parametrize("name, cls, kwargs", UPDATE_RULES)
def test_each_update_rule_takes_the_torch_optim_step(name, cls, kwargs):
    """Six full-batch steps through gdlab equal six steps of the torch.optim class driven by hand
    on one whole-set autograd pass (float64, same initial parameters)."""
    config = cfg(task="iris", model="mlp:4-8-3:tanh", optimizer=name, lr=0.05, steps=6, dtype="float64")
    prepared = prepare(config)
    ref_model = prepared.model
    init = {k: v.clone() for k, v in ref_model.state_dict().items()}
    result = run(config)
    ref_model.load_state_dict(init)
    opt = cls(ref_model.parameters(), lr=0.05, **kwargs)
    loss_fn = get_loss("cross_entropy")
    X, y = prepared.data.X_train, prepared.data.y_train
    for _ in range(6):
        opt.zero_grad()
        loss_fn(ref_model(X), y).backward()
        opt.step()
    for p, q in zip(result.model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-13)


def test_history_accounting_counts_gradient_evaluations():
    """Minibatch B=10 over N rows for 3 epochs: epochs = samples / N at every record, the run
    stops after exactly 3 epochs, and the step count is 3 * ceil(N / 10)."""
    result = run(cfg(task="iris", optimizer="gd", lr=0.1, regime="minibatch", batch_size=10,
                     max_epochs=3, log_every=1, eval_every=5))
    n = result.final["n_train"]
    steps_per_epoch = math.ceil(n / 10)
    assert result.final["step"] == 3 * steps_per_epoch
    assert result.final["epochs"] == pytest.approx(3.0)
    assert result.final["gradient_evaluations"] == 3 * n
    recs = result.history
    for a, b in zip(recs, recs[1:]):
        assert b["step"] > a["step"] and b["epochs"] >= a["epochs"] and b["wall_time_s"] >= a["wall_time_s"]
    assert [r["step"] for r in recs if r["test_loss"] is not None][:3] == [0, 5, 10]
    assert result.final["status"] == "completed" and result.final["stop_reason"] == "max_epochs"


def test_stochastic_steps_use_one_sample_each():
    """Stochastic regime: each step adds exactly 1/N epoch."""
    result = run(cfg(task="iris", optimizer="gd", lr=0.01, regime="stochastic", steps=25, log_every=1))
    n = result.final["n_train"]
    assert result.final["gradient_evaluations"] == 25
    assert [r["epochs"] for r in result.history[:5]] == pytest.approx([i / n for i in range(5)])


def test_gd_diverges_above_two_over_lambda_max_and_converges_below():
    """On linear regression (a quadratic with Hessian X^T X / m for the 0.5-mean convention) GD
    converges for lr < 2/lambda_max and diverges for lr > 2/lambda_max."""
    data = load_task("linreg", seed=0, dtype=torch.float64)
    A = np.c_[data.X_train.numpy(), np.ones(data.n_train)]
    lam = np.linalg.eigvalsh(A.T @ A / data.n_train).max()
    below = run(cfg(task="linreg", optimizer="gd", lr=0.95 * 2 / lam, steps=3000, dtype="float64",
                    nonfinite_policy="stop"))
    above = run(cfg(task="linreg", optimizer="gd", lr=1.05 * 2 / lam, steps=3000, dtype="float64",
                    nonfinite_policy="stop"))
    assert below.final["status"] == "completed" and below.final["grad_norm"] < 1e-6
    assert above.final["status"] == "diverged"
    assert any(e["kind"] in ("loss_exploding", "nonfinite") for e in above.events)


def test_loss_tolerance_and_time_budget_stop_the_run():
    """loss_tol stops with target_reached at the first step whose objective is <= tol; a tiny time
    budget stops with time_budget."""
    result = run(cfg(task="iris", optimizer="adam", lr=0.05, steps=2000, loss_tol=0.2, log_every=1))
    assert result.final["status"] == "target_reached"
    losses = [r["train_loss"] for r in result.history if r["train_loss"] is not None]
    assert losses[-1] <= 0.2 and all(v > 0.2 for v in losses[:-1])
    timed = run(cfg(task="digits", optimizer="gd", regime="stochastic", time_budget_s=0.2))
    assert timed.final["status"] == "time_budget"
    assert 0.2 <= timed.final["wall_time_s"] < 2.0


def test_minibatch_loss_tolerance_uses_the_full_objective():
    """In minibatch regimes the loss target is checked on the full training objective."""
    result = run(cfg(task="iris", optimizer="adam", lr=0.05, regime="minibatch", batch_size=16,
                     max_epochs=200, loss_tol=0.3, eval_every=2))
    assert result.final["status"] == "target_reached"
    assert result.history[-1]["train_loss"] <= 0.3


def test_same_config_and_seed_give_identical_histories():
    """Two runs with the same config and seed on CPU produce identical numbers (wall time aside)."""
    config = dict(task="spirals", optimizer="momentum", lr=0.1, regime="minibatch", batch_size=32,
                  max_epochs=2, log_every=1)
    a, b = run(cfg(**config)), run(cfg(**config))
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]
    assert strip(a.history) == strip(b.history)
    c = run(cfg(**{**config, "seed": 1}))
    assert strip(c.history) != strip(a.history)


def test_linesearch_runs_in_the_loop_and_decreases_monotonically():
    """Armijo line search on the full batch: the objective never increases, and the lr column
    records the accepted step sizes."""
    result = run(cfg(task="breast_cancer", optimizer="linesearch", lr=1.0, steps=60, l2=1e-3,
                     dtype="float64", log_every=1))
    losses = [r["train_loss"] for r in result.history]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    assert result.final["loss_evaluations"] >= 60
    assert len({r["lr"] for r in result.history}) > 1


def test_run_record_is_json_with_required_keys(tmp_path):
    """The record has the DESIGN keys; save_run writes run.json and params.pt that reload with
    weights_only=True into the same parameters."""
    result = run(cfg(task="iris", steps=5))
    record = result.to_record()
    assert set(record) >= {"config", "environment", "final", "history", "events", "diagnostics"}
    for key in ("step", "epochs", "wall_time_s", "train_loss", "test_loss", "test_accuracy",
                "grad_norm", "status"):
        assert key in record["final"]
    for key in ("gdlab", "torch", "python", "numpy", "device", "threads", "seed", "config_hash"):
        assert key in record["environment"]
    json.dumps(record, allow_nan=False)
    out = save_run(result, tmp_path / "run1")
    assert json.loads((out / "run.json").read_text())["final"]["step"] == 5
    state = torch.load(out / "params.pt", weights_only=True)
    for k, v in result.model.state_dict().items():
        assert torch.equal(state[k], v)


def test_nonfinite_values_become_null_with_an_event():
    """The record holds no NaN/Inf: non-finite numbers become null and an event names the field."""
    result = RunResult(
        config={}, environment={}, final={"train_loss": float("nan"), "step": 3},
        history=[{"step": 0, "train_loss": 1.0}, {"step": 1, "train_loss": float("inf")}],
        events=[], diagnostics={"sharpness": [{"step": 0, "value": float("nan")}]},
    )
    record = result.to_record()
    json.dumps(record, allow_nan=False)
    assert record["final"]["train_loss"] is None and record["history"][1]["train_loss"] is None
    assert record["diagnostics"]["sharpness"][0]["value"] is None
    fields = [e["detail"] for e in record["events"] if e["kind"] == "nonfinite_value"]
    assert len(fields) == 3 and any("final.train_loss" in f for f in fields)


def test_batchnorm_eval_and_train_layer_modes_run():
    """An MLP with BatchNorm trains in both layer modes; stochastic + BatchNorm in train mode is a
    user error (one row per chunk has no batch statistics)."""
    for mode in ("train", "eval"):
        r = run(cfg(task="iris", model="mlp:4-16-3:relu:bn", layer_mode=mode, steps=5))
        assert r.final["status"] == "completed"
    with pytest.raises(GdlabError, match="layer-mode eval"):
        prepare(cfg(task="iris", model="mlp:4-16-3:relu:bn", regime="stochastic"))
    # full batch in chunks of 7 over 120 rows: the last chunk holds one row (BatchNorm's own error
    # at the first step before this check: "Expected more than 1 value per channel")
    with pytest.raises(GdlabError, match="would pass 1; use --layer-mode eval"):
        prepare(cfg(task="iris", model="mlp:4-16-3:relu:bn", chunk_size=7))
    assert run(cfg(task="iris", model="mlp:4-16-3:relu:bn", chunk_size=8, steps=2)).final["status"] == "completed"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (dict(task="digts"), "did you mean 'digits'"),
        (dict(model="mlp:10-32-10:relu"), "takes 10 inputs"),
        (dict(optimizer="adm"), "did you mean 'adam'"),
        (dict(lr=-0.1), "'lr' must be > 0"),
        (dict(lr=0.0), "'lr' must be > 0"),
        (dict(regime="minibatch", batch_size=100000), "larger than the training set"),
        (dict(loss="mse"), "cross_entropy"),
        (dict(bogus=1), "unknown config field 'bogus'"),
        (dict(device="cuda:0"), "no CUDA GPU") if not torch.cuda.is_available() else (dict(device="tpu"), "device"),
    ],
)
def test_bad_configs_fail_before_training(overrides, needle):
    """Each user mistake raises a one-line GdlabError naming it, before anything runs."""
    with pytest.raises(GdlabError) as info:
        prepare(cfg(**{"task": "digits", **overrides}))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_deterministic_mode_gives_identical_runs_and_is_restored():
    """--deterministic: two runs with the same config and seed have identical histories
    (wall time aside) and parameters; the run records it; torch's global setting is restored."""
    before = torch.are_deterministic_algorithms_enabled()
    config = dict(task="digits", model="mlp:64-32-10:relu:dropout=0.2", regime="minibatch",
                  batch_size=64, max_epochs=2, deterministic=True, log_every=1)
    a, b = run(cfg(**config)), run(cfg(**config))
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]
    assert strip(a.history) == strip(b.history)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert a.environment["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() == before

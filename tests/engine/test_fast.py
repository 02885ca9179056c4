"""The compiled fast path: functional update rules against torch.optim, the block loop against the
eager loop (same steps, same stops, same guard events), and one real torch.compile run."""

import math

import pytest
import torch

from gdlab.config import RunConfig
from gdlab.engine import choose
from gdlab.engine.steppers.compiled import StepFunctions
from gdlab.engine.loop import NonFiniteError
from gdlab.errors import GdlabError
from gdlab.optim import build_optimizer
from gdlab.optim.functional import FUNCTIONAL_RULES, clip_functional, functional_rule
from gdlab.optim.clipping import clip_gradients
from gdlab.run import run

RULE_CASES = [
    ("gd", {}),
    ("gd", {"weight_decay": 0.1}),
    ("momentum", {"dampening": 0.3, "weight_decay": 0.05}),
    ("nesterov", {"momentum": 0.8}),
    ("adam", {}),
    ("adam", {"amsgrad": True, "weight_decay": 0.01, "betas": [0.8, 0.9]}),
    ("adamw", {"weight_decay": 0.1}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1}),
]


@pytest.mark.parametrize("name,hparams", RULE_CASES)
def test_functional_rule_equals_torch_optim_step_by_step(name, hparams):
    """Twelve steps of each functional rule on a stream of random float64 gradients equal the
    torch.optim optimizer the registry builds, to 1e-13."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (4,)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    torch_params = [p.clone().requires_grad_(True) for p in start]
    opt = build_optimizer(name, torch_params, 0.05, **hparams)
    rule = functional_rule(name, 0.05, **hparams)
    params = [p.clone() for p in start]
    state = rule.init(params)
    lr = torch.tensor(0.05, dtype=torch.float64)
    for _ in range(12):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        for p, g in zip(torch_params, grads):
            p.grad = g.clone()
        opt.step()
        params, state = rule.update(params, grads, state, lr)
    for mine, ref in zip(params, torch_params):
        torch.testing.assert_close(mine, ref.detach(), rtol=1e-13, atol=1e-13)


def test_functional_rule_with_a_learning_rate_per_stacked_copy():
    """With parameters stacked K = 3 deep and lr of shape (3,), copy k moves exactly as the
    unstacked rule with lr[k] (Adam, three different rates)."""
    gen = torch.Generator().manual_seed(1)
    rule = functional_rule("adam", 0.1)
    lrs = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    stacked = [torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)]
    grads = [torch.randn(3, 2, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    state = rule.init(stacked)
    out = stacked
    for g in grads:
        out, state = rule.update(out, [g], state, lrs)
    for k in range(3):
        single = [stacked[0][k]]
        st = rule.init(single)
        for g in grads:
            single, st = rule.update(single, [g[k]], st, lrs[k])
        torch.testing.assert_close(out[0][k], single[0], rtol=1e-14, atol=1e-14)


def test_line_search_has_no_functional_form():
    assert "linesearch" not in FUNCTIONAL_RULES
    with pytest.raises(GdlabError, match="no functional form"):
        functional_rule("linesearch", 0.1)


def test_functional_clipping_equals_the_in_place_clipping():
    """Value then norm clipping without mutation gives clip_gradients' gradients and factor."""
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) * 5, torch.randn(3, generator=gen,
                                                                                 dtype=torch.float64)]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    ref = clip_gradients(params, max_norm=2.0, max_value=3.0)
    clipped, factor = clip_functional(grads, 2.0, 3.0)
    for p, g in zip(params, clipped):
        torch.testing.assert_close(g, p.grad)
    assert float(factor) == pytest.approx(ref.factor, rel=1e-12)


def both_paths(**kw):
    base = dict(dtype="float64", **kw)
    eager = run(RunConfig.from_dict({**base, "compile": "off"}))
    blocked = run(RunConfig.from_dict({**base, "compile": "on"}))
    assert eager.final["engine"]["path"] == "eager"
    assert blocked.final["engine"]["path"] == "compiled"
    return eager, blocked


@pytest.mark.parametrize("optimizer,params", [("gd", {}), ("momentum", {}), ("nesterov", {}), ("adam", {}),
                                              ("adamw", {}), ("rmsprop", {"centered": True}), ("adagrad", {})])
def test_block_loop_equals_the_eager_loop(uncompiled_blocks, assert_same_run, optimizer, params):
    """25 steps of a digits MLP with blocks of 10 (eval_every 10) and a remainder: the same history
    (every step logged), test metrics, clip factors, events and final parameters as the eager loop
    to 1e-10 in float64, with clipping and an L2 term."""
    eager, blocked = both_paths(task="digits", model="mlp:64-16-10:tanh", optimizer=optimizer, lr=0.05,
                                optimizer_params=params, steps=25, eval_every=10, log_every=1,
                                clip_norm=0.5, l2=1e-3)
    assert blocked.final["engine"]["block"] == 10
    assert any(h.get("clip_factor", 1.0) < 1.0 for h in eager.history)
    assert_same_run(eager, blocked)


def test_block_loop_follows_a_schedule_and_stops_at_the_loss_target(uncompiled_blocks, assert_same_run):
    """Cosine schedule (policy stop) and a loss target reached inside a block: the run stops at the
    same step as the eager loop, with the same per-step learning rates."""
    eager, blocked = both_paths(task="linreg", lr=0.5, steps=200, schedule="cosine", nonfinite_policy="stop",
                                loss_tol=0.52, eval_every=8, log_every=1)
    assert eager.final["status"] == "target_reached" and eager.final["step"] % 8 != 0
    assert_same_run(eager, blocked)


def test_block_loop_stops_at_the_gradient_tolerance(uncompiled_blocks, assert_same_run):
    eager, blocked = both_paths(task="linreg", lr=0.3, steps=500, grad_tol=1e-4, eval_every=16)
    assert eager.final["stop_reason"] == "grad_tol"
    assert_same_run(eager, blocked)


@pytest.mark.parametrize("policy", ["stop", "rollback"])
def test_block_loop_guard_matches_the_eager_guard(uncompiled_blocks, assert_same_run, policy):
    """Linear regression at lr 1.2 > 2/lambda_max diverges: policy stop ends at the same step with
    the same last good parameters; policy rollback rolls back at the same steps, cuts the rate
    the same way and finishes identically."""
    eager, blocked = both_paths(task="linreg", lr=1.2, steps=120, eval_every=10, log_every=1,
                                nonfinite_policy=policy, divergence_factor=1e3)
    kinds = {e["kind"] for e in eager.events}
    assert ("rollback" in kinds) == (policy == "rollback")
    assert_same_run(eager, blocked)


def test_block_loop_raise_policy(uncompiled_blocks):
    with pytest.raises(NonFiniteError, match="step"):
        run(RunConfig.from_dict(dict(task="linreg", lr=1.2, steps=200, compile="on", eval_every=10,
                                     nonfinite_policy="raise", divergence_factor=1e3)))


def test_compile_on_refuses_what_the_fast_path_does_not_cover():
    with pytest.raises(GdlabError, match="full-batch regime"):
        run(RunConfig.from_dict(dict(task="linreg", regime="minibatch", compile="on", steps=3)))
    with pytest.raises(GdlabError, match="diagnostics"):
        run(RunConfig.from_dict(dict(task="linreg", health_every=1, compile="on", steps=3)))
    with pytest.raises(GdlabError, match="no functional form"):
        run(RunConfig.from_dict(dict(task="linreg", optimizer="linesearch", compile="on", steps=3)))


def test_auto_keeps_short_runs_eager_and_says_why():
    result = run(RunConfig.from_dict(dict(task="linreg", steps=20)))
    assert result.final["engine"]["path"] == "eager"
    assert "too short" in result.final["engine"]["reason"]
    minibatch = run(RunConfig.from_dict(dict(task="linreg", regime="minibatch", steps=5)))
    assert "full-batch regime" in minibatch.final["engine"]["reason"]


@pytest.mark.parametrize("eager_step_s, path, reason", [
    (0.1, "eager", "about 60 s eager, compiling pays from about 300 s"),
    (1.0, "compiled", "compiled fast path"),
])
def test_auto_compiles_when_the_estimated_eager_time_repays_it(monkeypatch, uncompiled_blocks,
                                                               eager_step_s, path, reason):
    """The auto rule on given timings (the measurement of an eager gradient is injected, so the
    machine's load cannot change the outcome): 600 steps at 0.1 s make 60 s, too short to repay
    compiling; at 1 s they make 600 s, so the block is compiled and, a compiled linreg step taking
    milliseconds, kept."""
    monkeypatch.setattr(choose, "eager_step_time", lambda *a, **k: eager_step_s)
    result = run(RunConfig.from_dict(dict(task="linreg", steps=600, dtype="float64")))
    engine = result.final["engine"]
    assert (engine["path"], engine["step_s"]["eager"]) == (path, eager_step_s)
    assert reason in engine["reason"]


def test_a_compiled_step_no_faster_than_an_eager_one_is_dropped(uncompiled_blocks):
    """try_compile's rule: with an eager step of 1 ns given, no measured compiled step can beat
    it, so the choice is eager and says why; with 1000 s given, the compiled block is kept."""
    from gdlab.engine.objective import FunctionalObjective
    from gdlab.run import prepare

    prepared = prepare(RunConfig.from_dict(dict(task="linreg", dtype="float64")))
    objective = FunctionalObjective(prepared.model, prepared.loss_fn, prepared.chunk_size, 0.0, 0.0)
    rule = functional_rule("gd", 0.1)
    X, y = prepared.data.X_train, prepared.data.y_train
    for eager_step_s, path in ((1e-9, "eager"), (1e3, "compiled")):
        fns = StepFunctions(objective, rule, 2, None, None)
        params = objective.initial()
        choice = choose.try_compile(fns, params, rule.init(params), 0.1, X, y, eager_step_s=eager_step_s)
        assert choice.path == path and choice.step_s["eager"] == eager_step_s
        assert (fns.compiled_block is None) == (path == "eager")
    assert "is not faster than an eager one" in choose.try_compile(
        StepFunctions(objective, rule, 2, None, None), params, rule.init(params), 0.1, X, y,
        eager_step_s=1e-9).reason


def test_a_compile_failure_falls_back_to_the_eager_loop_with_a_warning(monkeypatch):
    def broken(self):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(StepFunctions, "compile", broken)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        result = run(RunConfig.from_dict(dict(task="linreg", steps=30, compile="on")))
    assert result.final["engine"]["path"] == "eager"
    assert "torch.compile failed (RuntimeError: no C++ compiler)" in result.final["engine"]["reason"]
    reference = run(RunConfig.from_dict(dict(task="linreg", steps=30, compile="off")))
    assert result.final["train_loss"] == reference.final["train_loss"]


def test_torch_compile_run_equals_the_eager_run():
    """The real thing: linear regression, 100 steps of Adam under torch.compile in float64, equal
    to the eager torch.optim run to 1e-9 (in float32 the two differ by rounding that Adam's
    normalised steps amplify to ~2e-5 relative over 100 steps). Blocks of two steps (eval_every
    2): a compiled graph unrolls its block, and a cold compile of a two-step block takes about
    20 s on a 2-core CPU against 33 s for the default ten."""
    base = dict(task="linreg", optimizer="adam", steps=100, dtype="float64", eval_every=2)
    eager = run(RunConfig.from_dict({**base, "compile": "off"}))
    compiled = run(RunConfig.from_dict({**base, "compile": "on"}))
    assert compiled.final["engine"]["path"] == "compiled", compiled.final["engine"]
    assert compiled.final["engine"]["compile_s"] > 0
    for a, b in zip(eager.history, compiled.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
    assert math.isfinite(compiled.final["wall_time_s"])

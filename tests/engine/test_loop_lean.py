"""The eager loop's cheap paths (unlogged steps, one-row slices, fused snapshots) change nothing a
run records: references are the same runs logged on every step and the schedule's own indices."""

import copy

import pytest
import torch

from gdlab.config import RunConfig
from gdlab.engine.steppers.eager import _copy_state
from gdlab.engine.regimes import make_schedule
from gdlab.run import run


def cfg(**kw):
    return RunConfig.from_dict({"compile": "off", **kw})


def test_next_row_follows_next_indices_across_epochs_and_a_restore():
    """next_row yields the rows next_indices yields for the same seed (over three epochs), and a
    schedule restored from state_dict mid-epoch continues with the same rows."""
    a, b = make_schedule("stochastic", 13, seed=3), make_schedule("stochastic", 13, seed=3)
    assert [a.next_row() for _ in range(39)] == [int(b.next_indices()) for _ in range(39)]
    for _ in range(5):
        a.next_row()
    c = make_schedule("stochastic", 13, seed=99)
    c.load_state_dict(a.state_dict())
    assert [c.next_row() for _ in range(20)] == [a.next_row() for _ in range(20)]


@pytest.mark.parametrize("config", [
    dict(task="linreg", lr=30.0, regime="stochastic", max_epochs=3, divergence_factor=1e300, optimizer="momentum"),
    dict(task="linreg", lr=50.0, steps=200, divergence_factor=1e300, optimizer="adam"),
    dict(task="digits", model="mlp:64-32-10:relu:bn", lr=20.0, regime="minibatch", batch_size=64, max_epochs=2,
         optimizer="momentum", divergence_factor=1e3),
    dict(task="linreg", lr=50.0, steps=300, nonfinite_policy="stop", divergence_factor=1e300),
    dict(task="linreg", lr=0.1, steps=60, clip_norm=1.0),
])
def test_unlogged_steps_record_the_same_run_as_logging_every_step(config):
    """With log_every=5 the history is exactly every fifth record (plus evaluations and the last)
    of the same run logged on every step, and the events, final record and parameters are equal:
    skipping the gradient norm on unlogged steps changes neither the guard's rollbacks nor stops."""
    every = run(cfg(**config, log_every=1, eval_every=7))
    sparse = run(cfg(**config, log_every=5, eval_every=7))
    assert every.events == sparse.events
    assert {k: v for k, v in every.final.items() if k != "wall_time_s"} == \
        {k: v for k, v in sparse.final.items() if k != "wall_time_s"}
    by_position = {}
    for record in every.history[:-1]:
        by_position.setdefault((record["step"], record["epochs"]), record)
    for record in sparse.history[:-1]:
        reference = by_position[(record["step"], record["epochs"])]
        assert {k: v for k, v in record.items() if k != "wall_time_s"} == \
            {k: v for k, v in reference.items() if k != "wall_time_s"}
    assert all(torch.equal(p, q) for p, q in zip(every.model.parameters(), sparse.model.parameters()))


def test_copy_state_equals_deepcopy_and_shares_no_tensor():
    """An Adam state dict (tensors, tuples, floats, None) copied by _copy_state equals
    copy.deepcopy's copy, and changing the optimizer afterwards leaves the copy untouched."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    state = opt.state_dict()
    mine, reference = _copy_state(state), copy.deepcopy(state)
    assert mine["param_groups"] == reference["param_groups"]
    assert all(torch.equal(mine["state"][0][k], reference["state"][0][k]) for k in reference["state"][0])
    opt.step()
    assert torch.equal(mine["state"][0]["exp_avg"], reference["state"][0]["exp_avg"])
    assert not torch.equal(mine["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])



def _rollback_trace(name, params, save, restore):
    """Eight steps with saves before steps 0, 3, 5 and a rollback (parameters, optimizer state,
    lr halved) after steps 1, 4, 6; the parameters after every step."""
    from gdlab.optim import build_optimizer

    w = torch.nn.Parameter(torch.arange(6.0, dtype=torch.float64).reshape(2, 3))
    opt = build_optimizer(name, [w], 0.1, **params)
    trace, saved_w, saved = [], None, None
    for step in range(8):
        if step in (0, 3, 5):
            saved_w, saved = w.detach().clone(), save(opt)
        w.grad = torch.sin(w.detach() * (step + 1))
        opt.step()
        if step in (1, 4, 6):
            restore(opt, saved)
            with torch.no_grad():
                w.copy_(saved_w)
            opt.param_groups[0]["lr"] *= 0.5
        trace.append(w.detach().clone())
    return trace


@pytest.mark.parametrize("name, params", [("momentum", {}), ("adam", {"amsgrad": True}),
                                          ("rmsprop", {"centered": True}), ("adagrad", {})])
def test_optimizer_snapshot_equals_load_state_dict(name, params):
    """The rollback snapshot's in-place optimizer copy restores what load_state_dict of a deep
    copy of state_dict() restores: the same trajectory through three rollbacks, one of them to
    before the first step (empty optimizer state)."""
    from gdlab.engine.steppers.eager import _OptimizerState

    def save_snapshot(opt):
        assert _OptimizerState.applies(opt)
        snap = save_snapshot.snap = getattr(save_snapshot, "snap", _OptimizerState())
        snap.save(opt)
        return snap

    reference = _rollback_trace(name, params, lambda opt: copy.deepcopy(opt.state_dict()),
                                lambda opt, saved: opt.load_state_dict(copy.deepcopy(saved)))
    snapshot = _rollback_trace(name, params, save_snapshot, lambda opt, snap: snap.restore(opt))
    for a, b in zip(reference, snapshot):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_optimizer_step_skips_only_an_unobserved_wrapper(name):
    """optimizer_step updates exactly as optimizer.step does; with a step hook registered or a
    profiler running it goes through the wrapper, so the hooks run and the profiler sees the
    step's range; with a torch lr scheduler attached it warns of nothing."""
    import warnings

    from gdlab.engine.steppers.eager import optimizer_step

    def make():
        gen = torch.Generator().manual_seed(1)
        p = torch.randn(5, generator=gen, requires_grad=True)
        return p, getattr(torch.optim, name)([p], lr=0.1)

    (a, opt_a), (b, opt_b) = make(), make()
    for k in range(3):
        a.grad = b.grad = torch.full((5,), float(k + 1))
        opt_a.step()
        optimizer_step(opt_b)
    assert torch.equal(a, b)

    calls = []
    handle = opt_b.register_step_post_hook(lambda *args: calls.append(1))
    optimizer_step(opt_b)
    handle.remove()
    assert calls == [1]

    with torch.profiler.profile() as prof:
        optimizer_step(opt_b)
    assert any(e.name == f"Optimizer.step#{name}.step" for e in prof.events())

    p, opt = make()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            p.grad = torch.ones(5)
            optimizer_step(opt)
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)

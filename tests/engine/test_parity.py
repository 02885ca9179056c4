"""Parity of the steppers: for each option in the table, the compiled and the stacked stepper
give the eager stepper's run (history, events, stopping step, final record and parameters) to
float rounding in float64, or the run records that the faster stepper was not chosen and why.
What each stepper supports is the table in docs/performance.md, checked here against what the
runs do."""

import re
from pathlib import Path

import pytest

from gdlab.config import RunConfig
from gdlab.engine.loop import NonFiniteError
from gdlab.errors import GdlabError
from gdlab.run import prepare, run
from gdlab.sweep import run_sweep, sweep_blocker

TOL = 1e-9
LINREG = dict(task="linreg", lr=0.1, steps=30)
MLP = dict(task="digits", model="mlp:64-16-10:tanh", lr=0.1, steps=20)
DIVERGING = dict(task="linreg", lr=1.2, steps=60, divergence_factor=1e3)

# option (the first column of the docs table) -> the run's config
CASES = {
    "clipping by norm": {**MLP, "clip_norm": 0.5},
    "clipping by value": {**MLP, "clip_value": 0.01},
    "schedule cosine": {**LINREG, "lr": 0.5, "schedule": "cosine"},
    "schedule step": {**LINREG, "schedule": "step:10:0.5"},
    "schedule warmup+exp": {**LINREG, "schedule": "warmup:5+exp:0.95"},
    "schedule with guard rollback": {**DIVERGING, "lr": 2.2, "schedule": "warmup:5+cosine:40:0.3",
                                     "nonfinite_policy": "rollback"},
    "guard stop": {**DIVERGING, "nonfinite_policy": "stop"},
    "guard rollback": {**DIVERGING, "lr": 8.0, "nonfinite_policy": "rollback"},
    "guard raise": {**DIVERGING, "nonfinite_policy": "raise"},
    "time budget": {**LINREG, "time_budget_s": 1e6},
    "loss tolerance": {**LINREG, "lr": 0.5, "steps": 200, "loss_tol": 0.52},
    "gradient tolerance": {**LINREG, "lr": 0.3, "steps": 500, "grad_tol": 1e-4},
    "L1": {**LINREG, "l1": 0.01},
    "L2": {**MLP, "l2": 0.01},
    "regime full": LINREG,
    "regime minibatch": {**LINREG, "regime": "minibatch", "batch_size": 16},
    "regime stochastic": {**LINREG, "regime": "stochastic", "steps": 50},
}

# what shows that a run exercised its option (so that parity cannot hold vacuously)
EXERCISED = {
    "clipping by norm": lambda r: any(h.get("clip_factor", 1.0) < 1.0 for h in r.history),
    "clipping by value": lambda r: any(h.get("clip_factor", 1.0) < 1.0 for h in r.history),
    "schedule cosine": lambda r: r.history[-1]["lr"] < 0.1 * r.history[0]["lr"],
    "schedule step": lambda r: r.history[-1]["lr"] == pytest.approx(0.1 * 0.5**3),
    "schedule warmup+exp": lambda r: r.history[1]["lr"] < r.history[5]["lr"] > r.history[-1]["lr"],
    "schedule with guard rollback": lambda r: r.final["rollbacks"] > 0 and r.history[-1]["lr"] < r.history[6]["lr"],
    "guard stop": lambda r: r.final["status"] == "diverged",
    "guard rollback": lambda r: len({e["step"] for e in r.events if e["kind"] == "rollback"}) < r.final["rollbacks"],
    "loss tolerance": lambda r: r.final["stop_reason"] == "loss_tol",
    "gradient tolerance": lambda r: r.final["stop_reason"] == "grad_tol",
}


def config(options, **changes):
    base = dict(dtype="float64", nonfinite_policy="stop", eval_every=5, log_every=1)
    return RunConfig.from_dict({**base, **options, **changes})


def eager_or_error(cfg):
    try:
        return run(cfg)
    except NonFiniteError as exc:
        return exc


@pytest.mark.parametrize("option", list(EXERCISED))
def test_each_case_exercises_its_option(option):
    assert EXERCISED[option](run(config(CASES[option], compile="off")))


def compiled_support(options, assert_same_run) -> str:
    """'yes' when the compiled stepper ran and equalled the eager one, else 'no' (with the
    reason recorded under --compile auto and refused under --compile on)."""
    eager = eager_or_error(config(options, compile="off"))
    try:
        compiled = eager_or_error(config(options, compile="on"))
    except GdlabError as exc:
        auto = eager_or_error(config(options, compile="auto"))
        reason = auto.final["engine"]["reason"]
        assert auto.final["engine"]["path"] == "eager" and reason and reason in str(exc)
        assert_same_run(eager, auto, TOL)
        return "no"
    if isinstance(eager, NonFiniteError):
        assert str(compiled) == str(eager)
    else:
        assert compiled.final["engine"]["path"] == "compiled"
        assert_same_run(eager, compiled, TOL)
    return "yes"


def stacked_support(options, assert_same_run) -> str:
    """'yes' when two copies (two learning rates) stacked and each equalled its eager run, else
    'no' with the reason the sweep recorded."""
    configs = [config(options, compile="off"), config(options, compile="off", lr=options["lr"] / 2)]
    reason = sweep_blocker(configs, prepare(configs[0]))
    if reason is not None:
        if options.get("nonfinite_policy") != "raise":
            results = run_sweep(configs, stacked="on")
            assert all(r.final["engine"]["sweep"] == f"sequential: {reason}" for r in results)
        return "no"
    for cfg, result in zip(configs, run_sweep(configs, stacked="on")):
        assert result.final["engine"]["path"] == "stacked"
        assert_same_run(run(cfg), result, TOL)
    return "yes"


def documented_support() -> dict[str, dict[str, str]]:
    """The support table of docs/performance.md: option -> {stepper: 'yes'/'no'}."""
    text = (Path(__file__).parents[2] / "docs" / "performance.md").read_text()
    start, end = text.index("<!-- support:start -->"), text.index("<!-- support:end -->")
    table = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in CASES:
            table[cells[0]] = {name: re.match(r"\w+", cell).group(0)
                               for name, cell in zip(("eager", "compiled", "stacked"), cells[1:])}
    return table


def test_the_documented_table_lists_every_option():
    table = documented_support()
    assert sorted(table) == sorted(CASES)
    assert all(row["eager"] == "yes" for row in table.values())


@pytest.mark.parametrize("option", list(CASES))
def test_compiled_stepper_parity(uncompiled_blocks, assert_same_run, option):
    assert compiled_support(CASES[option], assert_same_run) == documented_support()[option]["compiled"]


@pytest.mark.parametrize("option", list(CASES))
def test_stacked_stepper_parity(assert_same_run, option):
    assert stacked_support(CASES[option], assert_same_run) == documented_support()[option]["stacked"]

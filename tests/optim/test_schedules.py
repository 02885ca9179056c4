"""Tests for gdlab.optim.schedules: each schedule string yields the lr sequence of its closed-form
formula, per step, and really drives the optimizer's lr."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, LinearLR, SequentialLR, StepLR

from gdlab.errors import GdlabError
from gdlab.optim.linesearch import ArmijoLineSearch
from gdlab.optim.schedules import SCHEDULES, build_scheduler, parse_schedule, schedule_lrs

LR = 0.3


def cosine(t: int, lr: float, t_max: int, eta_min: float) -> float:
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def warmup(t: int, lr: float, w: int) -> float:
    """LinearLR(start_factor=1/W, end_factor=1, total_iters=W): the factor goes linearly from 1/W
    at t=0 to 1 at t=W."""
    return lr * (1 / w + (1 - 1 / w) * min(t, w) / w)


def test_constant_and_none_build_no_scheduler() -> None:
    """'constant' and None mean no scheduler; the lr stays put (reference: the base lr)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    assert build_scheduler(None, opt, 10) is None
    assert build_scheduler("constant", opt, 10) is None
    assert schedule_lrs("constant", LR, 5) == [LR] * 5
    assert schedule_lrs(None, LR, 3) == [LR] * 3


def test_step_schedule_matches_closed_form() -> None:
    """step:EVERY:GAMMA gives lr * GAMMA ** (t // EVERY) (reference: StepLR's formula)."""
    lrs = schedule_lrs("step:3:0.5", LR, 12)
    assert lrs == pytest.approx([LR * 0.5 ** (t // 3) for t in range(12)], rel=1e-12)


def test_exp_schedule_matches_closed_form() -> None:
    """exp:GAMMA gives lr * GAMMA ** t (reference: ExponentialLR's formula)."""
    lrs = schedule_lrs("exp:0.9", LR, 20)
    assert lrs == pytest.approx([LR * 0.9**t for t in range(20)], rel=1e-12)


def test_cosine_with_explicit_length_and_floor_matches_closed_form() -> None:
    """cosine:T:MIN_FACTOR gives eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2, eta_min =
    MIN_FACTOR * lr, for t <= T (reference: the SGDR closed form)."""
    lrs = schedule_lrs("cosine:20:0.1", LR, 21)
    assert lrs == pytest.approx([cosine(t, LR, 20, 0.1 * LR) for t in range(21)], rel=1e-9)
    assert lrs[-1] == pytest.approx(0.1 * LR, rel=1e-9)


def test_cosine_defaults_to_the_step_budget() -> None:
    """cosine without T spans the step budget, with eta_min 0 (reference: closed form, T = budget)."""
    lrs = schedule_lrs("cosine", LR, 50, total_steps=50)
    assert lrs == pytest.approx([cosine(t, LR, 50, 0.0) for t in range(50)], rel=1e-9, abs=1e-15)


def test_cosine_without_length_or_budget_names_the_fix() -> None:
    """cosine with neither T nor a step budget is a user error that says what to give."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with pytest.raises(GdlabError, match="cosine:T or a step budget"):
        build_scheduler("cosine", opt, None)


def test_warmup_alone_ramps_then_holds() -> None:
    """warmup:W ramps lr * (1/W + (1 - 1/W) t / W) for t < W, then holds lr (reference: LinearLR's
    linear factor)."""
    lrs = schedule_lrs("warmup:5", LR, 12)
    assert lrs == pytest.approx([warmup(t, LR, 5) for t in range(12)], rel=1e-12)
    assert lrs[0] == pytest.approx(LR / 5)
    assert lrs[5:] == pytest.approx([LR] * 7)


def test_warmup_then_cosine_shortens_the_cosine_by_w() -> None:
    """warmup:W+cosine with budget S: warmup for t < W, then cosine over S - W steps counted from
    W (reference: the two closed forms)."""
    w, budget = 4, 30
    lrs = schedule_lrs(f"warmup:{w}+cosine", LR, budget, total_steps=budget)
    expected = [warmup(t, LR, w) if t < w else cosine(t - w, LR, budget - w, 0.0) for t in range(budget)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_warmup_then_explicit_cosine_uses_its_own_length() -> None:
    """warmup:W+cosine:T:F: the cosine phase lasts T steps after the warmup, floor F * lr."""
    lrs = schedule_lrs("warmup:3+cosine:10:0.2", LR, 13)
    expected = [warmup(t, LR, 3) if t < 3 else cosine(t - 3, LR, 10, 0.2 * LR) for t in range(13)]
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("text", "rest"),
    [("warmup:4+step:3:0.5", lambda s: LR * 0.5 ** (s // 3)), ("warmup:4+exp:0.8", lambda s: LR * 0.8**s)],
)
def test_warmup_then_decay_counts_from_the_end_of_warmup(text, rest) -> None:
    """warmup:W+REST: REST starts at lr at step W and counts its steps from there (reference:
    closed forms with t - W)."""
    lrs = schedule_lrs(text, LR, 16)
    expected = [warmup(t, LR, 4) if t < 4 else rest(t - 4) for t in range(16)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_built_schedulers_are_the_documented_torch_classes() -> None:
    """Each string builds the torch scheduler the docs name (reference: torch.optim.lr_scheduler)."""
    def make(text: str, total: int | None = None):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
        return build_scheduler(text, opt, total)

    assert isinstance(make("step:2:0.5"), StepLR)
    assert isinstance(make("exp:0.9"), ExponentialLR)
    cos = make("cosine:7:0.5")
    assert isinstance(cos, CosineAnnealingLR) and cos.T_max == 7 and cos.eta_min == pytest.approx(0.5 * LR)
    assert isinstance(make("warmup:3"), LinearLR)
    seq = make("warmup:3+cosine", 20)
    assert isinstance(seq, SequentialLR)
    assert seq._milestones == [3]
    assert seq._schedulers[1].T_max == 17


def test_scheduler_changes_the_optimizer_lr_and_the_update() -> None:
    """The scheduler drives param_groups' lr, and SGD's update on a constant gradient equals that
    lr (reference: theta_{t+1} - theta_t = -lr_t * g with g = 1)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=LR)
    sched = build_scheduler("exp:0.5", opt, None)
    expected = schedule_lrs("exp:0.5", LR, 6)
    for t in range(6):
        assert opt.param_groups[0]["lr"] == pytest.approx(expected[t])
        before = p.detach().clone()
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        assert float(before - p.detach()) == pytest.approx(expected[t], rel=1e-12)
        sched.step()


def test_parse_schedule_returns_validated_phases() -> None:
    """parse_schedule splits names and values (reference: the documented syntax)."""
    assert parse_schedule("warmup:5+cosine:100:0.1") == [("warmup", (5.0,)), ("cosine", (100.0, 0.1))]
    assert parse_schedule(" Step:10:0.5 ") == [("step", (10.0, 0.5))]
    assert parse_schedule("cosine") == [("cosine", ())]
    assert parse_schedule("constant") == [("constant", ())]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cosin", "did you mean 'cosine'"),
        ("step:0:0.5", "EVERY must be an integer >= 1"),
        ("step:2.5:0.5", "EVERY must be an integer >= 1"),
        ("step:2:1.5", "GAMMA must be in"),
        ("exp:0", "GAMMA must be in"),
        ("exp:nan", "GAMMA must be in"),
        ("exp", "exp takes 1 value"),
        ("exp:0.9:2", "exp takes 1 value"),
        ("cosine:0", "T must be an integer"),
        ("cosine:10:1", "MIN_FACTOR must be in"),
        ("cosine:10:-0.1", "MIN_FACTOR must be in"),
        ("warmup:0", "W must be an integer"),
        ("warmup:x", "not a number"),
        ("warmup:3+", "empty part"),
        ("exp:0.9+cosine", "only a warmup"),
        ("warmup:3+warmup:2", "another warmup"),
        ("warmup:3+exp:0.9+cosine", "at most one"),
        ("", "non-empty"),
    ],
)
def test_bad_schedules_raise_gdlab_error(text: str, message: str) -> None:
    """Bad syntax or values raise one-line GdlabErrors naming the problem."""
    with pytest.raises(GdlabError, match=message) as info:
        parse_schedule(text)
    assert "\n" not in str(info.value)


def test_build_scheduler_rejects_bad_budget_and_line_search() -> None:
    """A non-integer budget and a schedule on the line search (which picks its own step) are
    user errors."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with pytest.raises(GdlabError, match="step budget"):
        build_scheduler("cosine", opt, 0)
    with pytest.raises(GdlabError, match="leaves no steps"):
        build_scheduler("warmup:10+cosine", opt, 10)
    ls = ArmijoLineSearch([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(GdlabError, match="line search"):
        build_scheduler("exp:0.9", ls, None)


def test_schedules_listing_covers_every_name_with_syntax() -> None:
    """SCHEDULES describes every accepted name, each one line with its syntax."""
    assert set(SCHEDULES) == {"constant", "step", "exp", "cosine", "warmup"}
    for name, description in SCHEDULES.items():
        assert name in description and "\n" not in description

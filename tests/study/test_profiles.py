"""Tests for gdlab.study.profiles: performance ratios and Dolan-More profiles on a hand-made
3-task x 3-solver table, against values read off the table by hand."""

from __future__ import annotations

import math

import pytest

from gdlab.study.profiles import performance_profile, performance_ratios

# t1: all solve; t2: C does not; t3: nobody does.
COSTS = {
    "t1": {"A": 10.0, "B": 20.0, "C": 40.0},
    "t2": {"A": 6.0, "B": 3.0, "C": None},
    "t3": {"A": None, "B": None, "C": None},
}
INF = math.inf


def test_ratios_divide_by_the_best_cost_per_task() -> None:
    """ratio = cost / least cost of the task; unsolved -> inf; a task nobody solved is all inf
    (reference: t1 10/10, 20/10, 40/10; t2 6/3, 3/3, inf)."""
    assert performance_ratios(COSTS) == {
        "t1": {"A": 1.0, "B": 2.0, "C": 4.0},
        "t2": {"A": 2.0, "B": 1.0, "C": INF},
        "t3": {"A": INF, "B": INF, "C": INF},
    }


def test_profile_at_chosen_taus_matches_hand_counts() -> None:
    """rho_s(tau) = (tasks with ratio <= tau) / 3, the unsolved task included in the count
    (reference: A's ratios 1, 2, inf; B's 2, 1, inf; C's 4, inf, inf)."""
    taus, curves = performance_profile(COSTS, taus=[1.0, 1.5, 2.0, 3.0, 4.0, 100.0])
    assert taus == [1.0, 1.5, 2.0, 3.0, 4.0, 100.0]
    third = 1 / 3
    assert curves["A"] == pytest.approx([third, third, 2 * third, 2 * third, 2 * third, 2 * third])
    assert curves["B"] == pytest.approx([third, third, 2 * third, 2 * third, 2 * third, 2 * third])
    assert curves["C"] == pytest.approx([0, 0, 0, 0, third, third])


def test_default_taus_span_one_to_beyond_the_largest_ratio() -> None:
    """Default taus start at exactly 1, end at 1.1 x the largest finite ratio (4), are increasing,
    contain each finite ratio, and the curves are the hand counts at them (reference: the table)."""
    taus, curves = performance_profile(COSTS)
    assert taus[0] == 1.0
    assert taus[-1] == pytest.approx(4.4)
    assert all(a < b for a, b in zip(taus, taus[1:]))
    assert {2.0, 4.0} <= set(taus)
    for i, tau in enumerate(taus):
        assert curves["A"][i] == pytest.approx(((tau >= 1) + (tau >= 2)) / 3)
        assert curves["C"][i] == pytest.approx((tau >= 4) / 3)


def test_absent_solver_and_zero_best_cost() -> None:
    """A solver missing from a task's entry has not solved it; with a least cost of 0, cost 0 is
    ratio 1 and a positive cost inf (reference: the limit of cost / best as best -> 0)."""
    ratios = performance_ratios({"t1": {"A": 0.0, "B": 2.0}, "t2": {"A": 5.0}})
    assert ratios == {"t1": {"A": 1.0, "B": INF}, "t2": {"A": 1.0, "B": INF}}


def test_negative_cost_is_rejected() -> None:
    """A cost is a time or a count, never negative."""
    with pytest.raises(ValueError, match="negative"):
        performance_ratios({"t": {"A": -1.0}})

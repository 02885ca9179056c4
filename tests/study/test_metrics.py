"""Tests for gdlab.study.metrics: time-to-target, area under the curve, seed statistics and ranks,
each against a value computed by hand from a small synthetic history or sample."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from gdlab.errors import GdlabError
from gdlab.study.metrics import (
    SeedStats,
    Target,
    area_under_curve,
    rank_optimizers,
    seed_statistics,
    time_to_target,
)

HISTORY = [
    {"step": 0, "epochs": 0.0, "wall_time_s": 0.0, "train_loss": 1.0, "test_loss": 1.1, "test_accuracy": 0.1},
    {"step": 1, "epochs": 1.0, "wall_time_s": 0.5, "train_loss": None, "test_loss": None, "test_accuracy": None},
    {"step": 2, "epochs": 2.0, "wall_time_s": 1.25, "train_loss": 0.1, "test_loss": 0.3, "test_accuracy": 0.6},
    {"step": 3, "epochs": 3.0, "wall_time_s": 2.0, "train_loss": 0.01, "test_loss": 0.2, "test_accuracy": 0.9},
    {"step": 4, "epochs": 4.0, "wall_time_s": 3.5, "train_loss": 0.001, "test_loss": 0.25, "test_accuracy": 0.95},
]


def test_loss_target_is_first_record_at_or_below_value() -> None:
    """A loss target is reached at the first record with loss <= value (reference: the hand-read
    history: 0.01 <= 0.05 first at step 3, i.e. 3 epochs and 2.0 s)."""
    target = Target("train_loss", 0.05)
    assert time_to_target(HISTORY, target, "epochs") == 3.0
    assert time_to_target(HISTORY, target, "wall_time_s") == 2.0
    assert time_to_target(HISTORY, target) == 2.0


def test_loss_target_equal_value_counts_as_reached() -> None:
    """Reaching means <= (reference: train loss 0.1 at step 2 equals the target 0.1)."""
    target = Target("train_loss", 0.1)
    assert time_to_target(HISTORY, target, "epochs") == 2.0
    assert time_to_target(HISTORY, target, "wall_time_s") == 1.25


def test_accuracy_target_is_first_record_at_or_above_value() -> None:
    """An accuracy target is reached at the first record with accuracy >= value (reference: 0.9 at
    step 3, 3 epochs and 2.0 s; 0.5 at step 2, 2 epochs and 1.25 s)."""
    assert time_to_target(HISTORY, Target("test_accuracy", 0.9), "epochs") == 3.0
    assert time_to_target(HISTORY, Target("test_accuracy", 0.9), "wall_time_s") == 2.0
    assert time_to_target(HISTORY, Target("test_accuracy", 0.5), "epochs") == 2.0
    assert time_to_target(HISTORY, Target("test_accuracy", 0.5), "wall_time_s") == 1.25


def test_target_not_reached_is_none() -> None:
    """A target no record meets gives None, never a number (reference: the least test loss is 0.2)."""
    assert time_to_target(HISTORY, Target("test_loss", 0.1), "epochs") is None
    assert time_to_target(HISTORY, Target("test_accuracy", 0.99), "wall_time_s") is None
    assert time_to_target([], Target("train_loss", 1.0)) is None


def test_records_without_the_metric_are_skipped() -> None:
    """Records whose metric is None (or NaN) are skipped, not read as reached (reference: with
    target 0.5 the None at step 1 and a NaN are passed over and step 2 is the first hit)."""
    history = [dict(r) for r in HISTORY]
    history.insert(2, {"step": 1.5, "epochs": 1.5, "wall_time_s": 0.9, "train_loss": float("nan")})
    target = Target("train_loss", 0.5)
    assert time_to_target(history, target, "epochs") == 2.0
    assert time_to_target(history, target, "wall_time_s") == 1.25


def test_bad_metric_and_measure_are_rejected() -> None:
    """An unknown target metric is a user error naming the choices; an unknown measure a ValueError."""
    with pytest.raises(GdlabError, match="train_loss"):
        Target("train_los", 0.1)
    with pytest.raises(ValueError, match="measure"):
        time_to_target(HISTORY, Target("train_loss", 0.1), "steps")


def test_area_under_log_curve_matches_hand_trapezoid() -> None:
    """Mean level of log10(train loss) over epochs (reference: points (0,0), (2,-1), (3,-2), (4,-3)
    after skipping the None; trapezoids 2*(-0.5) + 1*(-1.5) + 1*(-2.5) = -5 over a span of 4)."""
    assert area_under_curve(HISTORY, "train_loss", "epochs", log=True) == pytest.approx(-5 / 4)


def test_area_under_linear_curve_matches_hand_trapezoid() -> None:
    """Mean level of the train loss itself over wall time (reference: trapezoids on
    (0, 1), (1.25, 0.1), (2, 0.01), (3.5, 0.001) divided by the span 3.5)."""
    area = 1.25 * (1 + 0.1) / 2 + 0.75 * (0.1 + 0.01) / 2 + 1.5 * (0.01 + 0.001) / 2
    assert area_under_curve(HISTORY, "train_loss", "wall_time_s", log=False) == pytest.approx(area / 3.5)


def test_area_under_curve_needs_two_points() -> None:
    """Fewer than 2 usable points give None (reference: one record, or only None losses)."""
    assert area_under_curve(HISTORY[:1]) is None
    assert area_under_curve(HISTORY[1:2] + HISTORY[1:2]) is None


def test_seed_statistics_match_hand_computation() -> None:
    """Mean, sample std and the t-interval of the mean over non-diverged finite values; diverged
    runs are excluded from the values and counted in the fraction (reference: values 1, 2, 4 have
    mean 7/3, sample variance 7/3; half-width t_{0.975, 2} * sqrt(7/3) / sqrt(3); 2 of 5 diverged)."""
    result = seed_statistics([1.0, 2.0, 4.0, None, 100.0], [False, False, False, True, True])
    half = stats.t.ppf(0.975, 2) * math.sqrt(7 / 3) / math.sqrt(3)
    assert result.n == 3
    assert result.mean == pytest.approx(7 / 3)
    assert result.std == pytest.approx(math.sqrt(7 / 3))
    assert result.ci_low == pytest.approx(7 / 3 - half)
    assert result.ci_high == pytest.approx(7 / 3 + half)
    assert result.diverged_fraction == pytest.approx(0.4)


def test_seed_statistics_confidence_level_sets_the_t_quantile() -> None:
    """confidence=0.9 uses t_{0.95, n-1} (reference: values 0 and 2, mean 1, std sqrt(2))."""
    result = seed_statistics([0.0, 2.0], [False, False], confidence=0.9)
    half = stats.t.ppf(0.95, 1) * math.sqrt(2) / math.sqrt(2)
    assert (result.ci_low, result.ci_high) == (pytest.approx(1 - half), pytest.approx(1 + half))


def test_seed_statistics_one_value_and_none() -> None:
    """One value: mean itself, std 0 and a zero-width interval; a non-diverged None is neither a
    value nor a divergence; nothing finite: None fields (reference: the definitions)."""
    one = seed_statistics([0.5, None], [False, False])
    assert one == SeedStats(1, 0.5, 0.0, 0.5, 0.5, 0.0)
    assert seed_statistics([None, 3.0], [True, True]) == SeedStats(0, None, None, None, None, 1.0)
    assert seed_statistics([], []) == SeedStats(0, None, None, None, None, 0.0)


def test_seed_statistics_rejects_mismatched_lengths() -> None:
    """values and diverged must describe the same runs."""
    with pytest.raises(ValueError, match="one entry per run"):
        seed_statistics([1.0, 2.0], [False])


def _stats(mean: float | None) -> SeedStats:
    return SeedStats(1 if mean is not None else 0, mean, 0.0, mean, mean, 0.0)


def test_rank_optimizers_competition_ranking() -> None:
    """Rank 1 = lowest mean; ties share the better rank and the next rank skips; no mean ranks last
    (reference: means e 0.5, b 1, a 2, d 2, c none -> 1, 2, 3, 3, 5)."""
    per = {"a": _stats(2.0), "b": _stats(1.0), "c": _stats(None), "d": _stats(2.0), "e": _stats(0.5)}
    assert rank_optimizers(per) == [("e", 1), ("b", 2), ("a", 3), ("d", 3), ("c", 5)]


def test_rank_optimizers_higher_is_better() -> None:
    """lower_is_better=False ranks the highest mean first (reference: 0.9 > 0.8 > 0.7)."""
    per = {"x": _stats(0.8), "y": _stats(None), "z": _stats(0.9), "w": _stats(0.7)}
    assert rank_optimizers(per, lower_is_better=False) == [("z", 1), ("x", 2), ("w", 3), ("y", 4)]

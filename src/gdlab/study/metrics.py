"""Pure measures on run records: time-to-target, area under the loss curve, statistics over seeds
and the ranking of optimizers by them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from gdlab.errors import unknown_name

TARGET_METRICS = ("train_loss", "test_loss", "test_accuracy")
MEASURES = ("wall_time_s", "epochs")


@dataclass(frozen=True)
class Target:
    """A level of one metric to reach: losses are reached at ``<= value``, accuracy at ``>= value``."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in TARGET_METRICS:
            raise unknown_name("target metric", self.metric, TARGET_METRICS)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "test_accuracy"

    def reached(self, observed: float) -> bool:
        """Whether one observed value of the metric meets the target."""
        return observed >= self.value if self.higher_is_better else observed <= self.value


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (so results stay valid JSON)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def time_to_target(history: list[dict[str, Any]], target: Target,
                   measure: str = "wall_time_s") -> float | None:
    """The ``measure`` (wall time in s, or ``"epochs"`` = gradient evaluations / N) at the first
    history record whose metric reaches ``target``; None means "not reached".

    Records whose metric is None or not finite are skipped (not measured at that step).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    for record in history:
        observed = finite_or_none(record.get(target.metric))
        if observed is not None and target.reached(observed):
            return float(record[measure])
    return None


def area_under_curve(history: list[dict[str, Any]], metric: str = "train_loss", measure: str = "epochs",
                     log: bool = True) -> float | None:
    """The mean level of a metric curve: the trapezoid area of ``log10(metric)`` (or ``metric``
    when ``log`` is False) over ``measure``, divided by the measure's span.

    Uses the records where both values are finite (and the metric is positive under ``log``, a
    loss of exactly 0 having no logarithm). None when fewer than 2 such points or a zero span.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    points = []
    for record in history:
        x, y = finite_or_none(record.get(measure)), finite_or_none(record.get(metric))
        if x is None or y is None or (log and y <= 0):
            continue
        points.append((x, math.log10(y) if log else y))
    if len(points) < 2:
        return None
    span = points[-1][0] - points[0][0]
    if span <= 0:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    return area / span


@dataclass
class SeedStats:
    """Statistics of one quantity over the seeds of a setting. n: finite values from runs that did not
    diverge; mean, std (sample, ddof=1; 0.0 when n = 1); ci_low, ci_high: Student-t confidence interval of the
    mean; all None when n = 0. diverged_fraction: diverged runs / all runs (0.0 when there are no runs)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    diverged_fraction: float


def seed_statistics(values: Sequence[float | None], diverged: Sequence[bool],
                    confidence: float = 0.95) -> SeedStats:
    """Mean, sample standard deviation and t-interval of the mean over the runs that did not diverge
    and have a finite value; ``values[i]`` and ``diverged[i]`` describe run i."""
    if len(values) != len(diverged):
        raise ValueError(f"values ({len(values)}) and diverged ({len(diverged)}) must have one entry per run")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diverged_fraction = sum(bool(d) for d in diverged) / len(diverged) if diverged else 0.0
    kept = [v for v, d in zip(values, diverged) if not d]
    kept = [v for v in map(finite_or_none, kept) if v is not None]
    n = len(kept)
    if n == 0:
        return SeedStats(0, None, None, None, None, diverged_fraction)
    mean = math.fsum(kept) / n
    if n == 1:
        return SeedStats(1, mean, 0.0, mean, mean, diverged_fraction)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return SeedStats(n, mean, std, mean - half, mean + half, diverged_fraction)


def rank_optimizers(per_optimizer: dict[str, SeedStats],
                    lower_is_better: bool = True) -> list[tuple[str, int]]:
    """(optimizer, rank) pairs, best first; rank 1 = best mean. Ties share the best rank of their group and
    the next rank skips ("1, 2, 2, 4", competition ranking), so a rank always says how many optimizers did
    strictly better. Optimizers with no finite mean share the last rank, one past the ranked ones. Order
    within a tie is input order."""
    scored = [(name, s.mean) for name, s in per_optimizer.items() if finite_or_none(s.mean) is not None]
    unscored = [name for name, s in per_optimizer.items() if finite_or_none(s.mean) is None]
    scored.sort(key=lambda item: item[1] if lower_is_better else -item[1])
    ranking: list[tuple[str, int]] = []
    for position, (name, mean) in enumerate(scored):
        tied_with_previous = position > 0 and mean == scored[position - 1][1]
        ranking.append((name, ranking[-1][1] if tied_with_previous else position + 1))
    ranking.extend((name, len(scored) + 1) for name in unscored)
    return ranking

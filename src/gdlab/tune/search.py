"""Learning-rate search with Optuna's ask-and-tell interface.

The caller supplies ``evaluate(trial_number, lr) -> value | None`` (the objective to minimise, or None for a
diverged trial); this module only decides which learning rates to try. Diverged trials are told to Optuna as
PRUNED, so TPE does not model them as good or bad values, and they never become the best trial. Every
optimizer of a study gets the same number of trials (the fairness protocol, see docs/studies.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna

from gdlab.errors import GdlabError, unknown_name

SAMPLERS = ("grid", "random", "tpe")


@dataclass
class SearchResult:
    """The trials of one search, in order: (trial number, lr, value or None), and the best."""

    trials: list[tuple[int, float, float | None]] = field(default_factory=list)
    best_lr: float | None = None
    best_value: float | None = None


def learning_rate_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` log-spaced learning rates from ``low`` to ``high`` (both included)."""
    if points == 1:
        return [float(math.sqrt(low * high))]
    return [float(v) for v in np.geomspace(low, high, points)]


def make_sampler(kind: str, trials: int, low: float, high: float, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for ``kind``: random (log-uniform) or tpe. A grid search also uses the
    random sampler, with the grid points enqueued as fixed trials (Optuna's GridSampler stops the
    study from inside ``tell``, which the ask-and-tell interface does not allow)."""
    if kind in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(trials, trials // 3)))
    raise unknown_name("sampler", kind, SAMPLERS)


def search_learning_rate(
    kind: str, trials: int, low: float, high: float, evaluate: Callable[[int, float], float | None], *,
    seed: int = 0, evaluate_many: Callable[[list[tuple[int, float]]], list[float | None]] | None = None,
) -> SearchResult:
    """Try ``trials`` learning rates in [low, high] (log scale) chosen by sampler ``kind`` and
    return every trial and the best (lowest value). ``best_lr`` is None if every trial diverged.

    ``evaluate_many([(trial_number, lr), ...]) -> [value | None, ...]``, when given, evaluates all
    trials of a grid or random search in one call (a stacked sweep); TPE, whose proposals
    depend on earlier results, always goes one trial at a time through ``evaluate``."""
    if not (0 < low <= high) or trials < 1:
        raise GdlabError(f"learning-rate search needs 0 < low <= high and trials >= 1, got {low}, {high}, {trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=make_sampler(kind, trials, low, high, seed))
    if kind == "grid":
        for lr in learning_rate_grid(low, high, trials):
            study.enqueue_trial({"lr": lr})
    result = SearchResult()

    def ask() -> tuple[optuna.trial.Trial, float]:
        trial = study.ask()
        return trial, (trial.suggest_float("lr", low, high, log=True) if low < high else low)

    def tell(trial: optuna.trial.Trial, lr: float, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            result.trials.append((trial.number, lr, None))
        else:
            study.tell(trial, value)
            result.trials.append((trial.number, lr, float(value)))

    if evaluate_many is not None and kind in ("grid", "random"):
        # grid points and random draws do not depend on earlier results: ask every trial first
        asked = [ask() for _ in range(trials)]
        values = evaluate_many([(trial.number, lr) for trial, lr in asked])
        for (trial, lr), value in zip(asked, values):
            tell(trial, lr, value)
    else:
        for _ in range(trials):
            trial, lr = ask()
            tell(trial, lr, evaluate(trial.number, lr))
    finished = [t for t in result.trials if t[2] is not None]
    if finished:
        _, result.best_lr, result.best_value = min(finished, key=lambda t: (t[2], t[1]))
    return result

"""What a study report needs, computed from the stored runs of one study: the ranking of
optimizers per task, time and gradient evaluations to target, performance profiles and the
learning-rate sensitivity of the tuning trials. Plain JSON-able data, no NaN."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict
from typing import Any

from gdlab.errors import GdlabError
from gdlab.store.records import StoredRun
from gdlab.study.metrics import (SeedStats, Target, area_under_curve, finite_or_none, rank_optimizers,
                                 seed_statistics, time_to_target)
from gdlab.study.profiles import performance_profile


def _first_seen(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _diverged(run: StoredRun) -> bool:
    return run.final.get("status") == "diverged"


def _to_target(runs: list[StoredRun], target: Target, measure: str) -> dict[str, Any]:
    reached = [c for c in (time_to_target(r.history, target, measure) for r in runs) if c is not None]
    return {"median": float(statistics.median(reached)) if reached else None, "reached": len(reached),
            "runs": len(runs)}


def _mean_auc(runs: list[StoredRun]) -> float | None:
    areas = [area_under_curve(r.history, "train_loss", "epochs", log=True) for r in runs if not _diverged(r)]
    areas = [a for a in areas if a is not None]
    return sum(areas) / len(areas) if areas else None


def _common_lr(runs: list[StoredRun]) -> float | None:
    # The final runs of one setting share their lr; should they not, the most common one stands.
    if not runs:
        return None
    return float(Counter(r.lr for r in runs).most_common(1)[0][0])


def _optimizer_row(runs: list[StoredRun], target: Target) -> dict[str, Any]:
    diverged = [_diverged(r) for r in runs]
    train = seed_statistics([r.final.get("train_loss") for r in runs], diverged)
    accuracy = seed_statistics([r.final.get("test_accuracy") for r in runs], diverged)
    return {
        "seeds": len(runs),
        "final_train_loss": asdict(train),
        "final_test_accuracy": asdict(accuracy),
        "time_to_target": _to_target(runs, target, "wall_time_s"),
        "evals_to_target": _to_target(runs, target, "epochs"),
        "auc": _mean_auc(runs),
        "diverged_fraction": train.diverged_fraction,
        "best_lr": _common_lr(runs),
    }


def _sensitivity_points(runs: list[StoredRun]) -> list[dict[str, Any]]:
    points = [{"lr": float(r.lr),
               "final_train_loss": None if _diverged(r) else finite_or_none(r.final.get("train_loss")),
               "status": str(r.final.get("status", "unknown"))} for r in runs]
    return sorted(points, key=lambda p: p["lr"])


def summarize_study(runs: list[StoredRun], targets: dict[str, Target]) -> dict[str, Any]:
    """The report's data for one study from its stored runs and one :class:`Target` per task.

    Ranking, to-target counts and profiles use the phase "final" runs (the best setting re-run
    over seeds), ranked by mean final train loss; sensitivity uses the phase "tune" runs, one point
    per run. Optimizers appear in every task they have a run in; one without final runs has empty
    statistics and ranks last; in the profiles, an optimizer not run on a task has not solved it.
    Time is wall time in s, evaluations are epochs (gradient evaluations / N); profiles take the
    median over the runs that reached the target.
    """
    studies = _first_seen([r.study for r in runs])
    if len(studies) > 1:
        raise ValueError(f"runs of one study expected, got several: {studies}")
    tasks = _first_seen([r.task for r in runs])
    optimizers = _first_seen([r.optimizer for r in runs])
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise GdlabError(f"no target given for task(s) {', '.join(missing)}; add one per task to the study")

    ranking: dict[str, list[dict[str, Any]]] = {}
    sensitivity: dict[str, dict[str, list[dict[str, Any]]]] = {}
    costs: dict[str, dict[str, dict[str, float | None]]] = {"time": {}, "evals": {}}
    for task in tasks:
        task_runs = [r for r in runs if r.task == task]
        task_optimizers = _first_seen([r.optimizer for r in task_runs])
        rows: dict[str, dict[str, Any]] = {}
        sensitivity[task] = {}
        for optimizer in task_optimizers:
            mine = [r for r in task_runs if r.optimizer == optimizer]
            rows[optimizer] = _optimizer_row([r for r in mine if r.phase == "final"], targets[task])
            sensitivity[task][optimizer] = _sensitivity_points([r for r in mine if r.phase == "tune"])
        order = rank_optimizers({o: SeedStats(**row["final_train_loss"]) for o, row in rows.items()})
        ranking[task] = [{"optimizer": o, "rank": rank, **rows[o]} for o, rank in order]
        for name, key in (("time", "time_to_target"), ("evals", "evals_to_target")):
            costs[name][task] = {o: rows[o][key]["median"] if o in rows else None for o in optimizers}

    profiles = {}
    for name, per_task in costs.items():
        taus, curves = performance_profile(per_task)
        profiles[name] = {"taus": taus, "curves": curves}

    return {
        "study": studies[0] if studies else "",
        "tasks": tasks,
        "optimizers": optimizers,
        "targets": {t: {"metric": targets[t].metric, "value": float(targets[t].value)} for t in tasks},
        "ranking": ranking,
        "profiles": profiles,
        "sensitivity": sensitivity,
    }

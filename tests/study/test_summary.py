"""Tests for gdlab.study.summary: the report data of a small synthetic study (2 tasks, 2 optimizers,
tune and final phases, one diverged run) against rankings, medians, counts and sensitivity points
worked out by hand from the synthetic histories."""

from __future__ import annotations

import json
import math

import pytest

from gdlab.errors import GdlabError
from gdlab.store.records import StoredRun
from gdlab.study.metrics import Target, area_under_curve
from gdlab.study.summary import summarize_study


def run(task: str, optimizer: str, phase: str, seed: int, lr: float, points: list[tuple],
        status: str = "completed", trial: int | None = None) -> StoredRun:
    """A stored run whose history has one record per (epochs, wall_time_s, train_loss, test_accuracy)."""
    history = [
        {"step": i, "epochs": e, "wall_time_s": w, "train_loss": loss, "test_loss": None, "test_accuracy": acc}
        for i, (e, w, loss, acc) in enumerate(points)
    ]
    last = history[-1]
    final = {"status": status, "train_loss": None if status == "diverged" else last["train_loss"],
             "test_loss": None, "test_accuracy": last["test_accuracy"], "epochs": last["epochs"],
             "wall_time_s": last["wall_time_s"]}
    key = f"s/{task}/{optimizer}/{phase}/{trial}/{seed}"
    return StoredRun(key, "s", task, optimizer, phase, trial, seed, lr, {}, {"final": final, "history": history})


def curve(walls: list[float], losses: list[float | None], accs: list[float | None] | None = None) -> list[tuple]:
    accs = accs or [None] * len(losses)
    return [(float(i), w, loss, a) for i, (w, loss, a) in enumerate(zip(walls, losses, accs))]


def tuned(task: str, optimizer: str, trial: int, lr: float, loss: float, status: str = "completed") -> StoredRun:
    return run(task, optimizer, "tune", 0, lr, curve([0, 1], [1.0, loss]), status, trial)


# quad (target train loss <= 0.1): adam has the lower mean final loss despite a diverged seed.
QUAD_GD = [
    run("quad", "gd", "final", 0, 0.5, curve([0, 1, 2, 3], [1, 0.5, 0.08, 0.05])),       # 2 epochs, 2 s
    run("quad", "gd", "final", 1, 0.5, curve([0, 1.5, 3, 4.5], [1, 0.09, 0.05, 0.04])),  # 1 epoch, 1.5 s
    run("quad", "gd", "final", 2, 0.5, curve([0, 1, 2, 3], [1, 0.6, 0.3, 0.2])),         # not reached
]
QUAD_ADAM = [
    run("quad", "adam", "final", 0, 0.01, curve([0, 0.5, 1, 1.5], [1, 0.2, 0.1, 0.02])),   # 2 epochs, 1 s
    run("quad", "adam", "final", 1, 0.01, curve([0, 0.5, 1, 1.5], [1, 0.05, 0.01, 0.01])),  # 1 epoch, 0.5 s
    run("quad", "adam", "final", 2, 0.01, curve([0, 0.5, 1], [1, 5.0, None]), status="diverged"),
]
# blobs (target test accuracy >= 0.9): gd reaches it and has the lower final loss; adam does not.
BLOBS_GD = [
    run("blobs", "gd", "final", 0, 0.3, curve([0, 1, 2], [1, 0.5, 0.3], [0.5, 0.8, 0.92])),  # 2 epochs, 2 s
    run("blobs", "gd", "final", 1, 0.3, curve([0, 2, 4], [1, 0.4, 0.2], [0.5, 0.91, 0.93])),  # 1 epoch, 2 s
]
BLOBS_ADAM = [
    run("blobs", "adam", "final", 0, 0.003, curve([0, 1, 2], [1, 0.6, 0.4], [0.5, 0.7, 0.8])),
    run("blobs", "adam", "final", 1, 0.003, curve([0, 1, 2], [1, 0.7, 0.5], [0.5, 0.6, 0.85])),
]
TUNE = [
    tuned("quad", "gd", 0, 1.0, 9.0, status="diverged"),
    tuned("quad", "gd", 1, 0.5, 0.06),
    tuned("quad", "gd", 2, 0.1, 0.3),
    tuned("quad", "adam", 0, 0.1, 0.5),
    tuned("quad", "adam", 1, 0.01, 0.02),
    tuned("blobs", "gd", 0, 0.3, 0.3),
]
RUNS = TUNE[:5] + QUAD_GD + QUAD_ADAM + TUNE[5:] + BLOBS_GD + BLOBS_ADAM
TARGETS = {"quad": Target("train_loss", 0.1), "blobs": Target("test_accuracy", 0.9)}


@pytest.fixture(scope="module")
def summary() -> dict:
    return summarize_study(RUNS, TARGETS)


def row(summary: dict, task: str, optimizer: str) -> dict:
    return next(r for r in summary["ranking"][task] if r["optimizer"] == optimizer)


def test_names_and_targets_in_first_seen_order(summary: dict) -> None:
    """Study, tasks and optimizers as first seen in the runs; targets as given."""
    assert summary["study"] == "s"
    assert summary["tasks"] == ["quad", "blobs"]
    assert summary["optimizers"] == ["gd", "adam"]
    assert summary["targets"] == {"quad": {"metric": "train_loss", "value": 0.1},
                                  "blobs": {"metric": "test_accuracy", "value": 0.9}}


def test_ranking_by_mean_final_train_loss(summary: dict) -> None:
    """Ranked by mean final train loss over non-diverged final runs (reference: quad adam
    (0.02 + 0.01)/2 = 0.015 < gd (0.05 + 0.04 + 0.2)/3; blobs gd 0.25 < adam 0.45)."""
    assert [(r["optimizer"], r["rank"]) for r in summary["ranking"]["quad"]] == [("adam", 1), ("gd", 2)]
    assert [(r["optimizer"], r["rank"]) for r in summary["ranking"]["blobs"]] == [("gd", 1), ("adam", 2)]
    adam = row(summary, "quad", "adam")["final_train_loss"]
    assert (adam["n"], adam["mean"], adam["diverged_fraction"]) == (2, pytest.approx(0.015), pytest.approx(1 / 3))
    assert row(summary, "quad", "gd")["final_train_loss"]["mean"] == pytest.approx(0.29 / 3)
    assert row(summary, "blobs", "adam")["final_train_loss"]["mean"] == pytest.approx(0.45)


def test_seed_counts_lr_divergence_and_accuracy(summary: dict) -> None:
    """seeds = final runs; best_lr = their lr; diverged fraction from statuses; accuracy stats are
    empty where no accuracy was measured (reference: the synthetic runs)."""
    adam = row(summary, "quad", "adam")
    assert (adam["seeds"], adam["best_lr"], adam["diverged_fraction"]) == (3, 0.01, pytest.approx(1 / 3))
    assert adam["final_test_accuracy"]["mean"] is None
    gd = row(summary, "blobs", "gd")
    assert (gd["seeds"], gd["best_lr"], gd["diverged_fraction"]) == (2, 0.3, 0.0)
    assert gd["final_test_accuracy"]["mean"] == pytest.approx(0.925)


def test_time_and_evals_to_target_medians_and_counts(summary: dict) -> None:
    """Median over the final runs that reached the target, with counts (reference: quad gd wall
    2, 1.5 -> 1.75 and epochs 2, 1 -> 1.5, 2 of 3; quad adam 1, 0.5 -> 0.75 and 1.5, 2 of 3 (the
    diverged one never reached it); blobs gd 2, 2 -> 2 and 1.5; blobs adam none of 2)."""
    assert row(summary, "quad", "gd")["time_to_target"] == {"median": 1.75, "reached": 2, "runs": 3}
    assert row(summary, "quad", "gd")["evals_to_target"] == {"median": 1.5, "reached": 2, "runs": 3}
    assert row(summary, "quad", "adam")["time_to_target"] == {"median": 0.75, "reached": 2, "runs": 3}
    assert row(summary, "quad", "adam")["evals_to_target"] == {"median": 1.5, "reached": 2, "runs": 3}
    assert row(summary, "blobs", "gd")["time_to_target"] == {"median": 2.0, "reached": 2, "runs": 2}
    assert row(summary, "blobs", "gd")["evals_to_target"] == {"median": 1.5, "reached": 2, "runs": 2}
    assert row(summary, "blobs", "adam")["time_to_target"] == {"median": None, "reached": 0, "runs": 2}


def test_auc_is_mean_over_non_diverged_final_runs(summary: dict) -> None:
    """auc = mean of area_under_curve (log10 train loss over epochs) over the final runs that did
    not diverge (reference: area_under_curve on adam's seeds 0 and 1 only)."""
    expected = (area_under_curve(QUAD_ADAM[0].history) + area_under_curve(QUAD_ADAM[1].history)) / 2
    assert row(summary, "quad", "adam")["auc"] == pytest.approx(expected)


def test_profiles_use_the_medians(summary: dict) -> None:
    """Profiles over the median costs (reference: time ratios quad gd 1.75/0.75 = 7/3, adam 1;
    blobs gd 1, adam unsolved; evals quad both 1, blobs gd 1, adam unsolved)."""
    time = summary["profiles"]["time"]
    assert time["taus"][0] == 1.0
    at_one = {opt: c[0] for opt, c in time["curves"].items()}
    assert at_one == {"gd": 0.5, "adam": 0.5}
    i = time["taus"].index(pytest.approx(7 / 3))
    assert {opt: c[i] for opt, c in time["curves"].items()} == {"gd": 1.0, "adam": 0.5}
    evals = summary["profiles"]["evals"]
    assert {opt: c[0] for opt, c in evals["curves"].items()} == {"gd": 1.0, "adam": 0.5}


def test_sensitivity_points_from_tune_runs_sorted_by_lr(summary: dict) -> None:
    """One point per tune run, sorted by lr, loss None when diverged; an optimizer without tune
    runs on a task has no points (reference: the TUNE runs)."""
    assert summary["sensitivity"]["quad"]["gd"] == [
        {"lr": 0.1, "final_train_loss": 0.3, "status": "completed"},
        {"lr": 0.5, "final_train_loss": 0.06, "status": "completed"},
        {"lr": 1.0, "final_train_loss": None, "status": "diverged"},
    ]
    assert summary["sensitivity"]["quad"]["adam"] == [
        {"lr": 0.01, "final_train_loss": 0.02, "status": "completed"},
        {"lr": 0.1, "final_train_loss": 0.5, "status": "completed"},
    ]
    assert summary["sensitivity"]["blobs"] == {"gd": [{"lr": 0.3, "final_train_loss": 0.3, "status": "completed"}],
                                               "adam": []}


def test_summary_is_strict_json(summary: dict) -> None:
    """The summary serialises without NaN or infinity (reference: json.dumps(allow_nan=False))."""
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["ranking"]["quad"][0]["optimizer"] == "adam"
    assert not any(isinstance(t, float) and math.isinf(t) for t in summary["profiles"]["time"]["taus"])


def test_missing_target_is_a_user_error() -> None:
    """Every task needs a target; the error names the task."""
    with pytest.raises(GdlabError, match="blobs"):
        summarize_study(RUNS, {"quad": TARGETS["quad"]})


def test_empty_study() -> None:
    """No runs give an empty, still serialisable summary."""
    empty = summarize_study([], {})
    assert (empty["tasks"], empty["optimizers"], empty["ranking"]) == ([], [], {})
    json.dumps(empty, allow_nan=False)

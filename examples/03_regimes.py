"""Case 3: batch vs stochastic vs mini-batch gradient descent, plus Nesterov and Adam.

Two convex problems with a known optimum J*: case 1's linear regression (y = 3x + 2 + noise, here
with more samples so that the regimes differ) and logistic regression of two overlapping Gaussian
blobs (gdlab's `logistic` task). Five methods: batch GD, mini-batch GD (B = 32), stochastic GD
(B = 1), and full-batch Nesterov and Adam. Each gets the same learning-rate grid (gdlab.tune),
scored by gradient evaluations to the target J <= J* + 1% J*; the tuned runs are then compared
by gradient evaluations (epochs = rows whose gradient was computed / N) and by training wall time,
never by steps. J* comes from numpy.linalg.lstsq and from scikit-learn's
unpenalised LogisticRegression.

    python examples/03_regimes.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from _shared import Checks, parse_args, print_table, save_figure
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from gdlab.config import RunConfig
from gdlab.run import RunResult, prepare, run
from gdlab.study.metrics import Target, time_to_target
from gdlab.tune import search_learning_rate

TARGET_GAP = 0.01  # the target is J* (1 + TARGET_GAP)
METHODS = {  # name -> (regime, optimizer, batch size)
    "batch GD": ("full", "gd", None),
    "mini-batch GD (B=32)": ("minibatch", "gd", 32),
    "stochastic GD (B=1)": ("stochastic", "gd", None),
    "Nesterov (full)": ("full", "nesterov", None),
    "Adam (full)": ("full", "adam", None),
}
FULL_BATCH = {name for name, (regime, _, _) in METHODS.items() if regime == "full"}
EVALS_PER_EPOCH = 20  # sample-based regimes measure the full training loss 20 times per epoch


@dataclass
class Problem:
    name: str
    task: str
    n_samples: int
    j_star: float
    n_train: int


@dataclass
class Tuned:
    """A method's best learning rate (by epochs to target), its runs at that rate (the grid trial
    and the repeats that time it) and the status of every grid trial."""

    method: str
    lr: float
    runs: list[RunResult]
    trials: list[tuple[float, str]]


def method_config(problem: Problem, method: str, lr: float, budgets: dict[str, float],
                  target: float | None) -> RunConfig:
    regime, optimizer, batch = METHODS[method]
    steps_per_epoch = 1 if regime == "full" else math.ceil(problem.n_train / (batch or 1))
    return RunConfig(
        task=problem.task, n_samples=problem.n_samples, regime=regime, optimizer=optimizer, lr=lr,
        batch_size=batch, max_epochs=budgets[regime], loss_tol=target,
        eval_every=max(1, steps_per_epoch // EVALS_PER_EPOCH), nonfinite_policy="stop",
        # gdlab compares each step's batch loss with the first step's batch loss; one sample's
        # loss can be ~0, so a ratio test would stop healthy SGD runs: count only non-finite values.
        divergence_factor=1e300,
    )


def reference_optimum(task: str, n_samples: int) -> tuple[float, int]:
    """J* of the task's training set by an independent solver, and the training-set size."""
    prepared = prepare(RunConfig(task=task, n_samples=n_samples, steps=1, dtype="float64"))
    X, y = prepared.data.X_train.numpy(), prepared.data.y_train.numpy()
    if task == "linreg":
        design = np.column_stack([X, np.ones(len(X))])
        theta, *_ = np.linalg.lstsq(design, y[:, 0], rcond=None)
        return 0.5 * float(np.mean((design @ theta - y[:, 0]) ** 2)), len(X)
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    return float(log_loss(y, model.predict_proba(X))), len(X)


def expected_epochs(steps: int, regime: str, batch: int, n: int) -> float:
    """Gradient evaluations / N spent by `steps` updates, from the step count alone: full batch
    uses N rows per step; sample regimes walk a fresh permutation in batches of B, the last batch
    of an epoch holding the rest."""
    if regime == "full":
        return float(steps)
    per_epoch = math.ceil(n / batch)
    whole, rest = divmod(steps, per_epoch)
    return whole + min(rest * batch, n) / n


def accounting_error(result: RunResult, n: int) -> float:
    """Largest |logged epochs - expected_epochs(step)| over a run's history records."""
    regime, batch = result.config["regime"], result.config["batch_size"]
    return max(abs(r["epochs"] - expected_epochs(r["step"], regime, batch, n)) for r in result.history)


def tune(problem: Problem, method: str, grid: tuple[float, float, int], budgets: dict[str, float],
         repeats: int) -> Tuned:
    """Grid search of the learning rate; a trial's score is its epochs to the target, or, if it
    never got there, 1e6 plus its final loss (so unreached trials rank after reached ones). The
    best trial is then run `repeats - 1` more times: its steps are seeded, its wall time is not."""
    target = problem.j_star * (1 + TARGET_GAP)
    results: dict[float, RunResult] = {}
    trials: list[tuple[float, str]] = []

    def evaluate(_: int, lr: float) -> float | None:
        result = run(method_config(problem, method, lr, budgets, target))
        results[lr] = result
        status = result.final["status"]
        trials.append((lr, status))
        if status == "diverged":
            return None
        if status == "target_reached":
            return result.final["epochs"]
        return 1e6 + result.final["train_loss"]

    search = search_learning_rate("grid", grid[2], grid[0], grid[1], evaluate)
    lr = search.best_lr if search.best_lr is not None else grid[0]
    again = [run(method_config(problem, method, lr, budgets, target)) for _ in range(repeats - 1)]
    return Tuned(method, lr, [results[lr], *again], trials)


def median_run(runs: list[RunResult], target: Target) -> tuple[RunResult, float | None, float | None]:
    """The run with the median time to target, its epochs and seconds to target (None: not reached)."""
    timed = sorted(runs, key=lambda r: time_to_target(r.history, target, "wall_time_s") or math.inf)
    middle = timed[(len(timed) - 1) // 2]
    return (middle, time_to_target(middle.history, target, "epochs"),
            time_to_target(middle.history, target, "wall_time_s"))


def curve(result: RunResult, measure: str, j_star: float) -> tuple[list[float], list[float]]:
    points = [(r[measure], r["train_loss"] - j_star) for r in result.history
              if r["train_loss"] is not None and r["train_loss"] - j_star > 0]
    return [p[0] for p in points], [p[1] for p in points]


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    checks = Checks()
    # Quick mode: fewer samples, a coarser grid and a smaller budget; the same checks.
    n_linreg, n_logistic = (400, 400) if args.quick else (1000, 1000)
    grid = (1e-3, 10.0, 5) if args.quick else (1e-3, 10.0, 9)
    # Epoch budgets (no time budget, so that the outcome does not depend on the machine's load).
    # Tuned sample-based regimes reach the target within 2 epochs; their smaller budget only ends
    # hopeless trials (a tiny or noise-dominated step) sooner, one-row steps being the slow ones.
    sample_budget = 8.0 if args.quick else 10.0
    budgets = {"full": 100.0, "minibatch": sample_budget, "stochastic": sample_budget}
    repeats = 2 if args.quick else 5  # runs of each tuned method; the median time is reported

    problems = []
    for name, task, n in (("linear regression", "linreg", n_linreg),
                          ("logistic regression (2 blobs)", "logistic", n_logistic)):
        j_star, n_train = reference_optimum(task, n)
        problems.append(Problem(name, task, n, j_star, n_train))

    tuned: dict[str, list[Tuned]] = {}
    for problem in problems:
        tuned[problem.name] = [tune(problem, m, grid, budgets, repeats) for m in METHODS]

    shown: dict[str, dict[str, RunResult]] = {}  # problem -> method -> the median-time run
    for problem in problems:
        target = Target("train_loss", problem.j_star * (1 + TARGET_GAP))
        rows, reached = [], {}
        shown[problem.name] = {}
        for t in tuned[problem.name]:
            result, epochs, seconds = median_run(t.runs, target)
            shown[problem.name][t.method] = result
            if epochs is not None:
                reached[t.method] = (epochs, seconds)
            statuses = [status for _, status in t.trials]
            rows.append([t.method, f"{statuses.count('target_reached')} of {len(statuses)}", t.lr,
                         result.final["step"], result.final["status"], result.final["train_loss"],
                         "not reached" if epochs is None else f"{epochs:.3g}",
                         "not reached" if seconds is None else f"{seconds * 1e3:.3g}"])
        by_epochs = min(reached, key=lambda m: reached[m][0]) if reached else "none"
        by_time = min(reached, key=lambda m: reached[m][1]) if reached else "none"
        print_table(
            f"{problem.name}: N_train = {problem.n_train}, J* = {problem.j_star:.5g}, "
            f"target J <= {target.value:.5g}; time: median of {repeats} runs of the tuned setting",
            ["method", "lrs reaching target", "tuned lr", "steps", "status", "final J", "epochs to target",
             "ms to target"], rows,
        )
        print(f"first to the target by gradient evaluations: {by_epochs}; by wall time: {by_time}\n")

        runs = [r for t in tuned[problem.name] for r in t.runs]
        lowest = min(r.final["train_loss"] for r in runs)
        checks.expect(lowest >= problem.j_star - 1e-5 * max(1.0, problem.j_star),
                      f"{problem.name}: no run goes below the reference optimum J*",
                      f"lowest final J {lowest:.7g}, J* {problem.j_star:.7g}")
        batch_gd = shown[problem.name]["batch GD"]
        checks.expect("batch GD" in reached, f"{problem.name}: tuned batch GD reaches J* + 1%",
                      f"status {batch_gd.final['status']}, final J {batch_gd.final['train_loss']:.6g}")
        worst = max(accounting_error(r, problem.n_train) for r in runs)
        checks.expect(worst < 1e-9, f"{problem.name}: gradient evaluations = rows used / N for every run",
                      f"largest difference from steps x batch / N: {worst:.2g}")
        differ = [t.method for t in tuned[problem.name]
                  if len({(r.final["step"], r.final["train_loss"]) for r in t.runs}) > 1]
        checks.expect(not differ, f"{problem.name}: repeated runs of a tuned method take identical steps "
                      "(only their wall time varies)", f"differing: {differ or 'none'}")
        checks.expect(by_epochs not in FULL_BATCH,
                      f"{problem.name}: by gradient evaluations a sample-based regime is first",
                      f"first: {by_epochs}")
        checks.expect(by_time in FULL_BATCH, f"{problem.name}: by wall time a full-batch method is first",
                      f"first: {by_time}")

    fig = Figure(figsize=(15, 9))
    axes = fig.subplots(2, 2)
    for row, problem in zip(axes, problems):
        for ax, measure, label in ((row[0], "epochs", "gradient evaluations / N (epochs)"),
                                   (row[1], "wall_time_s", "training wall time (s)")):
            for t in tuned[problem.name]:
                # Log axis: the start (0 epochs, 0 s) is left out, each curve begins after its first update.
                xs, ys = curve(shown[problem.name][t.method], measure, problem.j_star)
                keep = [i for i, v in enumerate(xs) if v > 0]
                ax.plot([xs[i] for i in keep], [ys[i] for i in keep], marker="o", ms=3 if len(keep) > 2 else 7,
                        label=f"{t.method}, lr {t.lr:.3g}")
            ax.axhline(TARGET_GAP * problem.j_star, color="k", ls="--", lw=1, label="target: J* + 1% of J*")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{label}, log scale")
            ax.set_ylabel("J - J* (training loss above the optimum)")
            ax.set_title(f"{problem.name}: by {'gradient evaluations' if measure == 'epochs' else 'wall time'}")
            ax.grid(True, which="major", alpha=0.3)
        row[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title=problem.name)
    fig.tight_layout()
    save_figure(fig, args.out, "03_regimes")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

"""Case 2: choosing the learning rate by grid search and by random search (gdlab.tune).

Two problems, each searched with the same number of trials on a log scale, each trial a
full-batch GD run of a fixed number of steps, scored by its final training loss:

* case 1's linear regression, where GD is a quadratic and lr < 2 / lambda_max is the exact
  stability condition: the best grid point must lie below it and every trial above it diverge;
* the digits MLP (64-128-10, ReLU, cross-entropy), where no such formula holds: scikit-learn's
  MLPClassifier, run as full-batch GD (solver sgd, batch = N, no momentum, no L2) from its own
  initialisation, is the independent reference for where the loss is lowest and where it diverges.

    python examples/02_learning_rate_selection.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from _shared import Checks, parse_args, print_table, save_figure
from matplotlib.figure import Figure
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from gdlab.config import RunConfig
from gdlab.diagnostics import sharpness
from gdlab.run import prepare, run
from gdlab.tune import SearchResult, learning_rate_grid, search_learning_rate

DIGITS_MODEL = "mlp:64-128-10:relu"


@dataclass
class Trial:
    """One search trial: its learning rate, final training loss and whether it diverged."""

    lr: float
    final_loss: float
    diverged: bool


def linreg_config(lr: float, steps: int) -> RunConfig:
    return RunConfig(task="linreg", n_samples=100, test_fraction=0.0, model="linear", loss="mse",
                     optimizer="gd", lr=lr, steps=steps, dtype="float64", nonfinite_policy="stop")


def digits_config(lr: float, steps: int) -> RunConfig:
    return RunConfig(task="digits", model=DIGITS_MODEL, optimizer="gd", lr=lr, steps=steps,
                     nonfinite_policy="stop")


def searched(kind: str, trials: int, low: float, high: float, make_config, seed: int = 0
             ) -> tuple[SearchResult, list[Trial]]:
    """Run a gdlab.tune learning-rate search whose trials are gdlab runs of `make_config(lr)`.

    A trial diverged when the run stopped as diverged (loss non-finite or 1e6 x its start) or
    ended above its initial loss; it is reported to the search as diverged (None).
    """
    seen: list[Trial] = []

    def evaluate(_: int, lr: float) -> float | None:
        result = run(make_config(lr))
        final, first = result.final["train_loss"], result.history[0]["train_loss"]
        diverged = (result.final["status"] == "diverged" or not math.isfinite(final) or final > first)
        seen.append(Trial(lr, final, diverged))
        return None if diverged else final

    return search_learning_rate(kind, trials, low, high, evaluate, seed=seed), seen


def sklearn_full_batch_gd(X: np.ndarray, y: np.ndarray, lr: float, steps: int) -> Trial:
    """scikit-learn's MLPClassifier (same 128-unit ReLU layer) trained by plain full-batch GD."""
    model = MLPClassifier((128,), activation="relu", solver="sgd", batch_size=len(X), learning_rate_init=lr,
                          momentum=0.0, nesterovs_momentum=False, alpha=0.0, max_iter=steps, shuffle=False,
                          tol=0.0, n_iter_no_change=steps + 1, random_state=0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow inside a diverging fit
        try:
            model.fit(X, y)
        except ValueError:  # "Solver produced non-finite parameter weights"
            return Trial(lr, math.inf, True)
    final = float(model.loss_curve_[-1])
    return Trial(lr, final, not math.isfinite(final) or final > model.loss_curve_[0])


def best(trials: list[Trial]) -> Trial:
    return min((t for t in trials if not t.diverged), key=lambda t: t.final_loss)


def plot_panel(ax, title: str, searches: dict[str, list[Trial]], threshold: float | None,
               threshold_label: str, loss_label: str) -> None:
    """Final loss against learning rate (log-log); diverged trials as crosses on the top edge."""
    finite = [t.final_loss for ts in searches.values() for t in ts if not t.diverged]
    top = max(finite) * 10
    styles = {"grid": ("o", "C0"), "random": ("^", "C1"), "scikit-learn (grid)": ("s", "C2")}
    for name, trials in searches.items():
        marker, color = styles[name]
        ok = sorted((t.lr, t.final_loss) for t in trials if not t.diverged)
        bad = [t.lr for t in trials if t.diverged]
        filled = "none" if name.startswith("scikit") else color
        ax.plot(*zip(*ok), marker=marker, ls="-" if name != "random" else "none", color=color,
                mfc=filled, label=f"{name}: final loss")
        if bad:
            ax.plot(bad, [top] * len(bad), marker="x", ls="none", color=color, ms=9,
                    label=f"{name}: diverged ({len(bad)}, drawn at the top)")
    if threshold is not None:
        ax.axvline(threshold, color="red", ls="--", lw=1.2, label=threshold_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(loss_label)
    ax.set_title(title)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(True, which="major", alpha=0.3)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    checks = Checks()
    # Quick mode keeps both grids (the checks compare grid points) and halves the digits budget.
    lin_steps, lin_trials = 100, 13
    digits_steps, digits_trials = (50, 9) if args.quick else (100, 9)

    lin = prepare(linreg_config(0.1, 1))
    x = lin.data.X_train.numpy()
    design = np.column_stack([x[:, 0], np.ones(len(x))])
    lam_max = float(np.linalg.eigvalsh(design.T @ design / len(x))[-1])
    threshold = 2.0 / lam_max
    lin_searches = {}
    for kind in ("grid", "random"):
        _, lin_searches[kind] = searched(kind, lin_trials, 1e-3, 10.0,
                                         lambda lr: linreg_config(lr, lin_steps))

    dig = prepare(digits_config(0.1, 1))
    sharp0 = sharpness(dig.model, dig.loss_fn, dig.data.X_train, dig.data.y_train, iters=30).values[0]
    dig_searches = {}
    for kind in ("grid", "random"):
        _, dig_searches[kind] = searched(kind, digits_trials, 1e-2, 1e2,
                                         lambda lr: digits_config(lr, digits_steps))
    X, y = dig.data.X_train.numpy(), dig.data.y_train.numpy()
    dig_searches["scikit-learn (grid)"] = [
        sklearn_full_batch_gd(X, y, lr, digits_steps) for lr in learning_rate_grid(1e-2, 1e2, digits_trials)
    ]

    rows = []
    for problem, searches in (("linear regression", lin_searches), ("digits MLP", dig_searches)):
        for name, trials in searches.items():
            b = best(trials)
            rows.append([problem, name, len(trials), b.lr, b.final_loss, sum(t.diverged for t in trials),
                         f"{min(t.lr for t in trials if t.diverged):.3g}" if any(t.diverged for t in trials) else "-"])
    print_table(
        f"Learning-rate search: linear {lin_steps} steps, 2/lambda_max = {threshold:.4f}; digits "
        f"{digits_steps} steps, sharpness at init {sharp0:.3f} (2/sharpness = {2 / sharp0:.3f})",
        ["problem", "search", "trials", "best lr", "best final loss", "diverged", "smallest diverged lr"],
        rows,
    )
    print("every trial, lr: final loss (* = diverged)")
    for problem, searches in (("linear", lin_searches), ("digits", dig_searches)):
        for name, trials in searches.items():
            shown = ", ".join(f"{t.lr:.3g}: {'*' if t.diverged else f'{t.final_loss:.3g}'}"
                              for t in sorted(trials, key=lambda t: t.lr))
            print(f"  {problem}, {name}: {shown}")

    grid_best = best(lin_searches["grid"])
    checks.expect(grid_best.lr < threshold, "linear: the best grid point lies below 2/lambda_max",
                  f"best lr {grid_best.lr:.4g} < {threshold:.4g}")
    for kind, trials in lin_searches.items():
        above = [t for t in trials if t.lr > threshold]
        below = [t for t in trials if t.lr < threshold]
        checks.expect(bool(above) and all(t.diverged for t in above),
                      f"linear, {kind} search: every trial above 2/lambda_max diverges",
                      f"{sum(t.diverged for t in above)} of {len(above)} above the threshold diverged")
        checks.expect(not any(t.diverged for t in below),
                      f"linear, {kind} search: no trial below 2/lambda_max diverges",
                      f"{sum(t.diverged for t in below)} of {len(below)} below the threshold diverged")

    grid = sorted(dig_searches["grid"], key=lambda t: t.lr)
    reference = sorted(dig_searches["scikit-learn (grid)"], key=lambda t: t.lr)
    ours_at = grid.index(best(grid))
    theirs_at = reference.index(best(reference))
    checks.expect(abs(ours_at - theirs_at) <= 1,
                  "digits: gdlab's best grid lr is scikit-learn's best (full-batch GD), to one grid point",
                  f"gdlab {grid[ours_at].lr:.3g}, scikit-learn {reference[theirs_at].lr:.3g}")
    checks.expect([t.diverged for t in grid] == [t.diverged for t in reference],
                  "digits: the same grid points diverge in gdlab and in scikit-learn",
                  f"gdlab {[round(t.lr, 3) for t in grid if t.diverged]}, "
                  f"scikit-learn {[round(t.lr, 3) for t in reference if t.diverged]}")
    checks.expect(0 < ours_at < len(grid) - 1,
                  "digits: the best grid lr is inside the grid (too small is slow, too large diverges)",
                  f"best at index {ours_at} of {len(grid)}")

    fig = Figure(figsize=(12, 6))
    ax_lin, ax_dig = fig.subplots(1, 2)
    plot_panel(ax_lin, f"Linear regression, {lin_steps} GD steps", lin_searches, threshold,
               f"2/lambda_max = {threshold:.3f}", "final training loss J = 1/(2m) sum (h-y)^2")
    plot_panel(ax_dig, f"Digits MLP 64-128-10, {digits_steps} full-batch GD steps", dig_searches,
               2 / sharp0, f"2/sharpness at init = {2 / sharp0:.2f} (not a bound for a network)",
               "final training cross-entropy (nats)")
    fig.tight_layout()
    save_figure(fig, args.out, "02_learning_rate_selection")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

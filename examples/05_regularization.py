"""Case 5: overfitting, L2 and L1 regularization, and early stopping.

A linear model with 40 weights and a bias, trained by full-batch GD on only 30 samples of
y = x . w_true + 1 + N(0, 0.5^2), where w_true has 5 nonzero entries out of 40: with more weights
than samples the model interpolates its training set (training loss 0) and does badly on a
held-out set of 1000 samples. gdlab's explicit regularizers change the objective to
J + (l2/2) ||w||^2 or J + l1 ||w||_1 (the bias is not penalised); they are exactly the objectives of
scikit-learn's Ridge (alpha = l2 * m) and Lasso (alpha = l1), the independent references here.
Early stopping picks the step with the lowest loss on a separate 30-sample validation split.

    python examples/05_regularization.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _shared import Checks, parse_args, print_table, save_figure
from matplotlib.figure import Figure
from sklearn.linear_model import Lasso, Ridge

from gdlab.config import RunConfig
from gdlab.run import RunResult, prepare, run

N_TRAIN, N_VALID, N_HELD_OUT, N_FEATURES = 30, 30, 1000, 40
W_TRUE = np.zeros(N_FEATURES)
W_TRUE[:5] = [2.0, -1.5, 1.0, -0.8, 0.5]
NOISE_STD = 0.5
L2_STRENGTHS = (0.03, 0.1, 0.3, 1.0)
L1_STRENGTHS = (0.03, 0.1, 0.3)
NEAR_ZERO = 1e-3  # |w| below this counts as a zero weight


def make_split(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """X (m, 40) standard normal, y (m, 1); float32-representable, as gdlab stores .npz data."""
    X = rng.standard_normal((m, N_FEATURES))
    y = X @ W_TRUE + 1.0 + NOISE_STD * rng.standard_normal(m)
    return X.astype(np.float32).astype(np.float64), y[:, None].astype(np.float32).astype(np.float64)


def config(data: Path, lr: float, steps: int, **extra) -> RunConfig:
    return RunConfig(data=str(data), standardize=False, model="linear", loss="mse", optimizer="gd",
                     lr=lr, steps=steps, dtype="float64", nonfinite_policy="stop", **extra)


def coefficients(result_or_model) -> tuple[np.ndarray, float]:
    model = getattr(result_or_model, "model", result_or_model)
    return model.linear.weight.detach().numpy()[0].copy(), float(model.linear.bias.item())


def data_loss(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> float:
    """J = 1/(2m) sum (x . w + b - y)^2, computed in numpy."""
    return 0.5 * float(np.mean((X @ w + b - y[:, 0]) ** 2))


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    checks = Checks()
    # Quick mode runs 1000 instead of 2500 steps; tolerances that depend on convergence are looser.
    steps = 1000 if args.quick else 2500
    weight_tol = 1e-2 if args.quick else 1e-6
    objective_tol = 1e-3 if args.quick else 1e-4

    rng = np.random.default_rng(0)
    (X, y), (X_valid, y_valid), (X_held, y_held) = (make_split(rng, m) for m in (N_TRAIN, N_VALID, N_HELD_OUT))
    workdir = tempfile.TemporaryDirectory()
    data = Path(workdir.name) / "sparse_regression.npz"
    # gdlab's test split is the validation split; the held-out set is only ever seen by numpy.
    np.savez(data, X=X, y=y, X_test=X_valid, y_test=y_valid)

    design = np.column_stack([X, np.ones(N_TRAIN)])
    eigenvalues = np.linalg.eigvalsh(design.T @ design / N_TRAIN)
    lam_max = float(eigenvalues[-1])
    lr = 1.8 / lam_max  # 90 % of the stability limit 2 / lambda_max: fast and stable

    w0, b0 = coefficients(prepare(config(data, lr, 1)).model)
    theta0 = np.append(w0, b0)
    # GD on an underdetermined least-squares problem converges to the interpolating solution
    # closest to its starting point: theta0 + pinv(A) (y - A theta0).
    closest = theta0 + np.linalg.pinv(design) @ (y[:, 0] - design @ theta0)

    plain = run(config(data, lr, steps, eval_every=5))
    w_plain, b_plain = coefficients(plain)
    gap = float(np.max(np.abs(np.append(w_plain, b_plain) - closest)))
    checks.expect(gap < weight_tol, "unregularized GD converges to the interpolant closest to its start "
                  "(numpy pinv)", f"max abs difference {gap:.2g}")
    train_plain, held_plain = data_loss(w_plain, b_plain, X, y), data_loss(w_plain, b_plain, X_held, y_held)
    checks.expect(train_plain < 1e-6 and held_plain > 1.0,
                  "without regularization the model overfits: training J ~ 0, held-out J > 1",
                  f"train {train_plain:.2g}, held-out {held_plain:.3g}")

    rows = [["none", "-", lr, train_plain, held_plain, held_plain - train_plain,
             int(np.sum(np.abs(w_plain) < NEAR_ZERO)), "-", "-"]]
    l2_runs: dict[float, RunResult] = {}
    for l2 in L2_STRENGTHS:
        # L2 adds l2 to every Hessian eigenvalue, so the stability limit becomes 2 / (lambda_max + l2).
        lr_l2 = 1.8 / (lam_max + l2)
        result = l2_runs[l2] = run(config(data, lr_l2, steps, l2=l2))
        w, b = coefficients(result)
        ridge = Ridge(alpha=l2 * N_TRAIN, solver="cholesky").fit(X, y[:, 0])
        diff = float(max(np.max(np.abs(w - ridge.coef_)), abs(b - ridge.intercept_)))
        rows.append(["L2", l2, lr_l2, data_loss(w, b, X, y), data_loss(w, b, X_held, y_held),
                     data_loss(w, b, X_held, y_held) - data_loss(w, b, X, y),
                     int(np.sum(np.abs(w) < NEAR_ZERO)), "Ridge", diff])
        checks.expect(diff < weight_tol, f"L2 = {l2:g}: GD's weights are scikit-learn Ridge(alpha = l2 m)'s",
                      f"max abs difference {diff:.2g}")

    l1_runs: dict[float, RunResult] = {}
    lasso_models: dict[float, Lasso] = {}
    for l1 in L1_STRENGTHS:
        # |w| is not differentiable at 0: a constant step leaves the zero weights oscillating by about
        # lr * l1, so the step decays to 0 (cosine schedule) and the iterates settle.
        result = l1_runs[l1] = run(config(data, lr, steps, l1=l1, schedule="cosine"))
        w, b = coefficients(result)
        lasso = lasso_models[l1] = Lasso(alpha=l1, tol=1e-12, max_iter=1_000_000).fit(X, y[:, 0])
        optimum = data_loss(lasso.coef_, lasso.intercept_, X, y) + l1 * float(np.abs(lasso.coef_).sum())
        objective = result.final["train_loss"]
        zeros_gd, zeros_lasso = int(np.sum(np.abs(w) < NEAR_ZERO)), int(np.sum(lasso.coef_ == 0))
        rows.append(["L1", l1, lr, data_loss(w, b, X, y), data_loss(w, b, X_held, y_held),
                     data_loss(w, b, X_held, y_held) - data_loss(w, b, X, y), zeros_gd,
                     f"Lasso ({zeros_lasso} zeros)", float(np.max(np.abs(w - lasso.coef_)))])
        checks.expect(-1e-9 <= objective / optimum - 1 < objective_tol,
                      f"L1 = {l1:g}: GD's objective J + l1 |w|_1 reaches scikit-learn Lasso's minimum",
                      f"{objective:.8g} vs {optimum:.8g} (relative {objective / optimum - 1:.2g})")
        checks.expect(abs(zeros_gd - zeros_lasso) <= 1,
                      f"L1 = {l1:g}: GD has as many near-zero weights (|w| < {NEAR_ZERO:g}) as Lasso has zeros, to one",
                      f"GD {zeros_gd}, Lasso {zeros_lasso} of {N_FEATURES}")

    validation = [(r["step"], r["test_loss"]) for r in plain.history if r["test_loss"] is not None]
    best_step, best_valid = min(validation, key=lambda sv: sv[1])
    stopped = run(config(data, lr, best_step))  # same seed and data: the same trajectory, cut at best_step
    w_stop, b_stop = coefficients(stopped)
    held_stop = data_loss(w_stop, b_stop, X_held, y_held)
    rows.append(["early stop", f"step {best_step}", lr, data_loss(w_stop, b_stop, X, y), held_stop,
                 held_stop - data_loss(w_stop, b_stop, X, y), int(np.sum(np.abs(w_stop) < NEAR_ZERO)), "-", "-"])
    replay = float(stopped.final["test_loss"])
    checks.expect(abs(replay - best_valid) <= 1e-12 * best_valid,
                  "re-running to the chosen step reproduces its validation loss exactly",
                  f"{replay:.12g} vs {best_valid:.12g}")
    checks.expect(held_stop < held_plain, "early stopping on the validation split lowers the held-out loss",
                  f"step {best_step}: {held_stop:.3g} vs {held_plain:.3g} after {steps} steps")

    best_l1 = min(L1_STRENGTHS, key=lambda s: data_loss(*coefficients(l1_runs[s]), X_valid, y_valid))
    held_l1 = data_loss(*coefficients(l1_runs[best_l1]), X_held, y_held)
    checks.expect(held_l1 < held_stop,
                  "the truth is sparse, so L1 (picked on validation) beats early stopping on held-out data",
                  f"L1 = {best_l1:g}: {held_l1:.3g} vs early stopping {held_stop:.3g}")

    print_table(
        f"Sparse linear regression: {N_TRAIN} training samples, {N_FEATURES} weights, GD {steps} steps at "
        f"lr = 1.8 / (lambda_max + l2), lambda_max = {lam_max:.3f}; held-out set of {N_HELD_OUT}",
        ["regularizer", "strength", "lr", "train J", "held-out J", "gap", f"|w| < {NEAR_ZERO:g}", "reference",
         "max |w - reference|"], rows)

    fig = Figure(figsize=(14, 4.4))
    ax_strength, ax_weights, ax_stop = fig.subplots(1, 3)
    for kind, runs, marker, color in (("L2", l2_runs, "o", "C0"), ("L1", l1_runs, "s", "C1")):
        strengths = sorted(runs)
        pairs = [coefficients(runs[s]) for s in strengths]
        ax_strength.plot(strengths, [data_loss(w, b, X, y) for w, b in pairs], marker=marker, ls="--",
                         mfc="none", color=color, label=f"{kind}: train J")
        ax_strength.plot(strengths, [data_loss(w, b, X_held, y_held) for w, b in pairs], marker=marker,
                         color=color, label=f"{kind}: held-out J")
    ax_strength.axhline(held_plain, color="gray", ls=":", label=f"no regularizer: held-out J {held_plain:.2f}")
    ax_strength.axhline(held_stop, color="C2", ls="-.", lw=1, label=f"early stopping: held-out J {held_stop:.2f}")
    ax_strength.set_xscale("log")
    ax_strength.set_yscale("log")
    ax_strength.set_xlabel("regularization strength (l2 or l1), log scale")
    ax_strength.set_ylabel("J = 1/(2m) sum (h - y)^2, log scale")
    ax_strength.set_title("Train / held-out loss against strength")
    ax_strength.legend(fontsize=7)

    index = np.arange(N_FEATURES)
    ax_weights.axhline(0, color="k", lw=0.5)
    ax_weights.plot(index, w_plain, "x", color="gray", label="no regularizer")
    ax_weights.plot(index, coefficients(l2_runs[0.1])[0], "o", mfc="none", color="C0", label="GD, L2 = 0.1")
    ax_weights.plot(index, coefficients(l1_runs[0.1])[0], "s", mfc="none", ms=7, color="C1", label="GD, L1 = 0.1")
    ax_weights.plot(index, lasso_models[0.1].coef_, ".", color="C3", label="scikit-learn Lasso, alpha 0.1")
    ax_weights.plot(index, W_TRUE, "_", ms=12, mew=2, color="k", label="true weights")
    ax_weights.set_xlabel("weight index")
    ax_weights.set_ylabel("weight value")
    ax_weights.set_title("Weights: L1 zeroes most of them")
    ax_weights.legend(fontsize=7)

    trained = [(r["step"], r["train_loss"]) for r in plain.history if r["step"] > 0]
    ax_stop.loglog(*zip(*trained), label=f"train J (reaches {trained[-1][1]:.0e})")
    ax_stop.loglog(*zip(*[sv for sv in validation if sv[0] > 0]), label="validation J")
    ax_stop.axvline(best_step, color="C2", ls="--",
                    label=f"early stop: step {best_step}, validation J {best_valid:.3f}\n"
                          f"(step {validation[-1][0]}: {validation[-1][1]:.3f})")
    ax_stop.set_ylim(1e-3, 30)
    ax_stop.set_xlabel("step (full-batch GD, no regularizer), log scale")
    ax_stop.set_ylabel("J, log scale")
    ax_stop.set_title("Early stopping on the validation split")
    ax_stop.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out, "05_regularization")
    workdir.cleanup()
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

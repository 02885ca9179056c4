"""Case 1: linear regression by batch gradient descent.

Data: y = 3x + 2 + N(0, 1) noise, x ~ U(0, 2), 100 samples (gdlab's `linreg` task, all rows used
for training). Loss: J(w, b) = 1/(2m) sum (h - y)^2 with h = w x + b (gdlab's `mse`).

GD on this quadratic is stable exactly when lr < 2 / lambda_max(A^T A / m), A = [x, 1] the design
matrix with its column of ones (the Hessian of J). The script measures that threshold two ways
(numpy's eigvalsh and gdlab's Lanczos sharpness), runs GD at 1/lambda_max to the numpy.linalg.lstsq
solution, and runs it once 5 % below and once 5 % above the threshold, where the excess loss
J - J* must shrink and grow by exactly (1 - lr * lambda)^2 per step.

    python examples/01_linear_regression.py [--quick] [--lr LR] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import numpy as np
import torch
from _shared import Checks, parse_args, print_table, save_figure
from matplotlib.figure import Figure

from gdlab.config import RunConfig
from gdlab.diagnostics import sharpness
from gdlab.run import RunResult, prepare, run

N_SAMPLES = 100
BELOW, ABOVE = 0.95, 1.05  # multiples of the threshold 2 / lambda_max


def positive(kind: type):
    """An argparse type: a number of `kind` that must be > 0 (argparse then exits 2 with one line)."""
    def parse(text: str):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=positive(float), default=None,
                        help="learning rate of the main run (default 1 / lambda_max)")
    parser.add_argument("--steps", type=positive(int), default=None,
                        help="steps of the main run (default 500, quick 300)")


def config(lr: float, steps: int) -> RunConfig:
    """The case-1 run: every sample for training, float64 so that 1e-6 agreement is meaningful."""
    return RunConfig(
        task="linreg", n_samples=N_SAMPLES, test_fraction=0.0, model="linear", loss="mse",
        optimizer="gd", lr=lr, steps=steps, dtype="float64",
        # "stop": a diverging run must be shown diverging, not rescued by the guard's rollback.
        nonfinite_policy="stop",
    )


def fitted(result: RunResult) -> np.ndarray:
    """(slope, intercept) of a trained linear model."""
    lin = result.model.linear
    return np.array([lin.weight.item(), lin.bias.item()])


def excess_losses(result: RunResult, j_star: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps and J(theta_t) - J* from a run's history (full batch: the loss is logged every step)."""
    rows = [(r["step"], r["train_loss"] - j_star) for r in result.history if r["train_loss"] is not None]
    steps, excess = np.array(rows).T
    return steps, excess


def per_step_factor(excess: np.ndarray, low: float, high: float) -> float:
    """Median ratio (J_{t+1} - J*) / (J_t - J*) over consecutive steps whose excess lies in
    [low, high]: away from the first steps (other modes still present) and from float rounding."""
    ratios = [b / a for a, b in itertools.pairwise(excess) if low <= a <= high and low <= b <= high]
    return float(np.median(ratios)) if ratios else math.nan


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    torch.set_num_threads(1)
    checks = Checks()
    steps = args.steps or (300 if args.quick else 500)

    prepared = prepare(config(lr=0.1, steps=1))
    x = prepared.data.X_train.numpy()[:, 0]
    y = prepared.data.y_train.numpy()[:, 0]
    design = np.column_stack([x, np.ones_like(x)])
    theta_star, *_ = np.linalg.lstsq(design, y, rcond=None)
    j_star = 0.5 * float(np.mean((design @ theta_star - y) ** 2))
    eigenvalues = np.linalg.eigvalsh(design.T @ design / len(x))
    lam_max = float(eigenvalues[-1])
    threshold = 2.0 / lam_max

    lanczos = sharpness(prepared.model, prepared.loss_fn, prepared.data.X_train, prepared.data.y_train,
                        iters=10, tol=None)
    checks.expect(abs(lanczos.values[0] - lam_max) <= 1e-8 * lam_max,
                  "gdlab's sharpness (Lanczos on Hessian-vector products) equals numpy's lambda_max",
                  f"{lanczos.values[0]:.10g} vs {lam_max:.10g}")

    lr_main = args.lr if args.lr is not None else 1.0 / lam_max
    main_run = run(config(lr_main, steps))
    below = run(config(BELOW * threshold, 400))
    above = run(config(ABOVE * threshold, 400))

    theta_gd = fitted(main_run)
    gap = float(np.max(np.abs(theta_gd - theta_star)))
    print_table(
        f"Linear regression, m = {len(x)}: lambda_max(A^T A/m) = {lam_max:.4f}, "
        f"lambda_min = {eigenvalues[0]:.4f}, largest stable step 2/lambda_max = {threshold:.4f}",
        ["run", "lr", "lr x lambda_max", "steps", "status", "slope", "intercept", "final J"],
        [
            ["numpy lstsq", "-", "-", "-", "-", theta_star[0], theta_star[1], j_star],
            *[[name, r.config["lr"], r.config["lr"] * lam_max, r.final["step"], r.final["status"],
               *fitted(r), r.final["train_loss"]]
              for name, r in (("GD (main)", main_run), (f"GD {BELOW:g} x 2/lambda", below),
                              (f"GD {ABOVE:g} x 2/lambda", above))],
        ],
    )
    print(f"max |theta_GD - theta_lstsq| = {gap:.3g}")

    checks.expect(gap <= 1e-6, "GD (main run) reaches the numpy.linalg.lstsq solution to 1e-6",
                  f"max abs difference {gap:.3g} after {main_run.final['step']} steps at lr {lr_main:.4g}")
    checks.expect(main_run.final["train_loss"] - j_star <= 1e-10 * j_star,
                  "GD's final loss equals the least-squares loss J*",
                  f"J = {main_run.final['train_loss']:.12g}, J* = {j_star:.12g}")

    _, below_excess = excess_losses(below, j_star)
    _, above_excess = excess_losses(above, j_star)
    # Theory: each eigen-direction of the error is multiplied by (1 - lr * lambda) per step, so the
    # excess loss by the square of the largest such factor once that direction dominates.
    lr_below, lr_above = below.config["lr"], above.config["lr"]
    expected_below = max(abs(1 - lr_below * lam) for lam in eigenvalues) ** 2
    expected_above = (lr_above * lam_max - 1) ** 2
    measured_below = per_step_factor(below_excess, 1e-10, 1e-2)
    measured_above = per_step_factor(above_excess, 1e-1, 1e6)
    checks.expect(below.final["status"] == "completed" and below_excess[-1] < 1e-9,
                  f"GD at {BELOW:g} x 2/lambda_max converges to J*",
                  f"status {below.final['status']}, final J - J* = {below_excess[-1]:.3g}")
    checks.expect(abs(measured_below / expected_below - 1) < 0.01,
                  "below the threshold J - J* shrinks by max|1 - lr lambda_i|^2 per step",
                  f"measured {measured_below:.5f}, theory {expected_below:.5f}")
    checks.expect(above.final["status"] == "diverged",
                  f"GD at {ABOVE:g} x 2/lambda_max diverges",
                  f"status {above.final['status']} at step {above.final['step']}, "
                  f"last J = {above.history[-2]['train_loss']:.3g}")
    checks.expect(abs(measured_above / expected_above - 1) < 0.01,
                  "above the threshold J - J* grows by (lr lambda_max - 1)^2 per step",
                  f"measured {measured_above:.5f}, theory {expected_above:.5f}")

    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_fit = fig.subplots(1, 2)
    for result, label in ((main_run, f"lr = {lr_main:.3g} (= {lr_main * lam_max:.2f} / lambda_max)"),
                          (below, f"lr = {lr_below:.3g} ({BELOW:g} x 2/lambda_max): converges"),
                          (above, f"lr = {lr_above:.3g} ({ABOVE:g} x 2/lambda_max): diverges")):
        steps_seen, excess = excess_losses(result, j_star)
        keep = excess > 0
        ax_loss.semilogy(steps_seen[keep], excess[keep], label=label)
    ax_loss.set_xlabel("step (full-batch gradient evaluations)")
    ax_loss.set_ylabel("J(theta) - J*  (J = 1/(2m) sum (h - y)^2)")
    ax_loss.set_title(f"Loss above the least-squares optimum; 2/lambda_max = {threshold:.3f}")
    ax_loss.legend(fontsize=8, loc="lower left")
    ax_loss.grid(True, which="major", alpha=0.3)

    order = np.argsort(x)
    ax_fit.scatter(x, y, s=12, alpha=0.6, label=f"data (m = {len(x)})")
    ax_fit.plot(x[order], theta_gd[0] * x[order] + theta_gd[1], lw=2,
                label=f"GD: y = {theta_gd[0]:.3f} x + {theta_gd[1]:.3f}")
    ax_fit.plot(x[order], theta_star[0] * x[order] + theta_star[1], "k--", lw=1,
                label=f"lstsq: y = {theta_star[0]:.3f} x + {theta_star[1]:.3f}")
    ax_fit.plot(x[order], 3 * x[order] + 2, ":", color="gray", label="truth: y = 3 x + 2")
    ax_fit.set_xlabel("x")
    ax_fit.set_ylabel("y")
    ax_fit.set_title("Fitted line")
    ax_fit.legend(fontsize=8)
    save_figure(fig, args.out, "01_linear_regression")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

"""Case 7: the stability threshold lr < 2 / lambda_max, exactly, and five ways to rescue a run past it.

Part 1, J(theta) = theta^2: gradient descent gives theta_k = (1 - 2 lr)^k theta_0, so it converges
for lr < 1 = 2 / J'', keeps |theta| = 1 forever at lr = 1 and diverges above. Part 2, least squares
on a design built so that its Hessian A^T A / N has the known eigenvalues 10, 4, 1, 1, 0.25: the
excess loss after k steps is 0.5 sum_i lambda_i (1 - lr lambda_i)^(2k) c_i^2, which the run must
follow to float rounding on both sides of 2 / 10. Both run through gdlab (a custom nn.Module for
theta^2, an .npz file for the quadratic) in float64 with the guard set to `stop`.

Part 3, a tanh network forecasting sine waves at 1.5 x 2 / sharpness (gdlab's Lanczos estimate at
initialisation) diverges; each remedy in turn must rescue it (finish with a training loss below a
tenth of the initial loss): exponential learning-rate decay, gradient-norm clipping, Adam and
RMSprop, and the non-finite guard's rollback (which also needs divergence caught early).

    python examples/07_stability_threshold.py [--quick] [--out DIR] [--decay GAMMA] [--clip-norm X]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _shared import Checks, parse_args, print_table, save_figure
from matplotlib.figure import Figure
from torch import nn

from gdlab.config import RunConfig
from gdlab.diagnostics import sharpness
from gdlab.run import RunResult, prepare, run

LR_FACTORS = (0.5, 0.9, 0.99, 1.0, 1.01, 1.1, 1.5)  # multiples of 2 / lambda_max
QUADRATIC_EIGENVALUES = (10.0, 4.0, 1.0, 0.25)  # of X^T X / N; the intercept adds one more 1.0
NETWORK = {"task": "sine", "model": "mlp:20-64-64-1:tanh"}
DIVERGING_FACTOR = 1.5  # the network run's lr, in multiples of 2 / sharpness at initialisation
RESCUED_FRACTION = 0.1  # rescued = completed with final loss below this fraction of the first loss


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decay", type=unit_float, default=0.97,
                        help="per-step factor of the exponential learning-rate decay remedy (default 0.97)")
    parser.add_argument("--clip-norm", type=positive_float, default=1.0,
                        help="gradient-norm ceiling of the clipping remedy (default 1.0)")


class ThetaSquared(nn.Module):
    """J(theta) = theta^2 through gdlab's mse loss: every row's output is sqrt(2) * theta and its
    target 0, so (1/N) sum_i 0.5 (sqrt(2) theta)^2 = theta^2. Input x: (N, 1), output (N, 1)."""

    def __init__(self, theta0: float = 1.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([theta0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0) * self.theta.expand(x.shape[0], 1)


def known_quadratic(n: int, eigenvalues: tuple[float, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A least-squares problem whose Hessian is known exactly: X (n, d) with X^T X / n =
    diag(eigenvalues) and columns orthogonal to the intercept's column of ones, so the Hessian of
    J(w, b) = 1/(2n) ||X w + b - y||^2 has the eigenvalues given plus 1 (the intercept)."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.standard_normal((n, d))]))
    X = math.sqrt(n) * q[:, 1:] * np.sqrt(np.asarray(eigenvalues))
    y = X @ rng.standard_normal(d) + 1.0 + 0.5 * rng.standard_normal(n)
    return X, y


def quadratic_config(data: Path, lr: float, steps: int) -> RunConfig:
    # float64 so that the closed form can be matched to rounding; every row trains; "stop": a
    # diverging run is shown diverging, not rescued by the guard.
    return RunConfig(data=str(data), standardize=False, test_fraction=0.0, model="linear", loss="mse",
                     optimizer="gd", lr=lr, steps=steps, dtype="float64", nonfinite_policy="stop")


def train_losses(result: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Steps and full-batch training losses of every logged step that has one."""
    rows = [(r["step"], r["train_loss"]) for r in result.history
            if r["train_loss"] is not None and r["batch_loss"] is not None]
    steps, losses = np.array(rows, dtype=np.float64).T
    return steps.astype(int), losses


def predicted_status(factor: float) -> str:
    """What the theorem says GD does at lr = factor * 2 / lambda_max on a quadratic."""
    if factor < 1:
        return "converges"
    return "stays on the edge" if factor == 1 else "diverges"


def observed_status(result: RunResult, excess: np.ndarray) -> str:
    """diverges (gdlab stopped the run), converges (the excess loss fell a million-fold) or
    stays on the edge; ``excess``: J(theta_k) - J* of the logged steps."""
    if result.final["status"] == "diverged":
        return "diverges"
    return "converges" if excess[-1] <= 1e-6 * excess[0] else "stays on the edge"


def theta_squared_part(data_dir: Path, steps: int, checks: Checks) -> dict[float, RunResult]:
    """GD on J = theta^2 at every multiple of 2 / J'' = 1: status and the closed form per step."""
    np.savez(data_dir / "zeros.npz", X=np.zeros((2, 1)), y=np.zeros(2))
    probe = prepare(quadratic_config(data_dir / "zeros.npz", 1.0, 1), model=ThetaSquared())
    lam = sharpness(probe.model, probe.loss_fn, probe.data.X_train, probe.data.y_train, iters=2, tol=None).values[0]
    checks.expect(abs(lam - 2.0) <= 1e-12, "theta^2: gdlab's sharpness is J'' = 2 (threshold 2/lambda = 1)",
                  f"Lanczos {lam:.15g}")
    results, rows, worst = {}, [], 0.0
    for factor in LR_FACTORS:
        lr = factor * 2.0 / 2.0
        result = run(quadratic_config(data_dir / "zeros.npz", lr, steps), model=ThetaSquared())
        results[factor] = result
        k, loss = train_losses(result)
        exact = (1.0 - 2.0 * lr) ** (2 * k)
        # Relative to exact, with an absolute floor: at lr 0.5 theta lands on 0, up to the rounding of
        # the gradient sqrt(2)^2 theta (2.2e-16 theta), so J is ~1e-32 where the closed form is 0.
        worst = max(worst, float(np.max(np.abs(loss - exact) / np.maximum(exact, 1e-20))))
        status = observed_status(result, loss)
        rows.append([f"{factor:g}", lr, result.final["status"], int(result.final["step"]), float(loss[-1]),
                     status, predicted_status(factor)])
    print_table(f"J(theta) = theta^2, theta_0 = 1: GD at lr = f x 2/J'' (= f), {steps} steps at most",
                ["f", "lr", "gdlab status", "steps", "last J", "observed", "theorem"], rows)
    checks.expect(all(r[5] == r[6] for r in rows),
                  "theta^2: GD converges for every lr < 1, stays at |theta| = 1 at lr = 1, diverges for lr > 1",
                  ", ".join(f"f={r[0]}: {r[5]}" for r in rows))
    # float64 rounds each step's factor by ~1e-16; compounded over up to 600 steps that is ~1e-12.
    checks.expect(worst <= 1e-10, "theta^2: every logged J(theta_k) equals (1 - 2 lr)^(2k) (float64)",
                  f"largest relative difference {worst:.2g}")
    return results


def quadratic_part(data_dir: Path, steps: int, checks: Checks) -> tuple[dict[float, RunResult], dict]:
    """GD on the known quadratic at multiples of 2 / 10: status, and the excess loss against the
    closed form 0.5 sum_i lambda_i (1 - lr lambda_i)^(2k) c_i^2."""
    X, y = known_quadratic(200, QUADRATIC_EIGENVALUES)
    np.savez(data_dir / "quadratic.npz", X=X, y=y)
    probe = prepare(quadratic_config(data_dir / "quadratic.npz", 0.1, 1))
    # The references use the rows gdlab trains on: its .npz reader stores values as float32 before
    # the float64 run converts them, so they differ from X, y by float32 rounding (~1e-8).
    X_run = probe.data.X_train.double().numpy()
    y_run = probe.data.y_train.double().numpy()[:, 0]
    A = np.column_stack([X_run, np.ones(len(y_run))])
    eigenvalues, eigenvectors = np.linalg.eigh(A.T @ A / len(y_run))
    lam_max = float(eigenvalues[-1])
    theta_star, *_ = np.linalg.lstsq(A, y_run, rcond=None)
    j_star = 0.5 * float(np.mean((A @ theta_star - y_run) ** 2))
    lanczos = sharpness(probe.model, probe.loss_fn, probe.data.X_train, probe.data.y_train, iters=6, tol=None)
    checks.expect(abs(lam_max - max(QUADRATIC_EIGENVALUES)) <= 1e-6 * lam_max and
                  abs(lanczos.values[0] - lam_max) <= 1e-9 * lam_max,
                  "quadratic: lambda_max is 10 by construction (to the file's float32 rounding), "
                  "by numpy eigvalsh and by gdlab's Lanczos",
                  f"eigvalsh {lam_max:.12g}, Lanczos {lanczos.values[0]:.12g}")
    theta0 = np.concatenate([p.detach().double().numpy().ravel() for p in probe.model.parameters()])
    c0 = eigenvectors.T @ (theta0 - theta_star)  # initial error in the Hessian's eigenbasis

    results, rows, worst = {}, [], 0.0
    for factor in LR_FACTORS:
        lr = factor * 2.0 / lam_max
        result = run(quadratic_config(data_dir / "quadratic.npz", lr, steps))
        results[factor] = result
        k, loss = train_losses(result)
        excess = loss - j_star
        exact = 0.5 * ((1.0 - lr * eigenvalues)[None, :] ** (2 * k[:, None]) * eigenvalues * c0 ** 2).sum(axis=1)
        # Compare where the excess is well above the float64 rounding of J itself (~1e-16 J*), which
        # the subtraction J - J* turns into a relative error of 1e-16 J* / excess.
        measurable = exact > 1e-7 * j_star
        worst = max(worst, float(np.max(np.abs(excess[measurable] / exact[measurable] - 1.0))))
        status = observed_status(result, excess)
        rows.append([f"{factor:g}", lr, result.final["status"], int(result.final["step"]),
                     float(excess[-1]), status, predicted_status(factor)])
    print_table(f"Least squares with Hessian eigenvalues {sorted(eigenvalues.round(6).tolist(), reverse=True)}: "
                f"GD at lr = f x 2/lambda_max = f x {2 / lam_max:.4g}, J* = {j_star:.6g}",
                ["f", "lr", "gdlab status", "steps", "last J - J*", "observed", "theorem"], rows)
    checks.expect(all(r[5] == r[6] for r in rows),
                  "quadratic: GD converges for every lr < 2/lambda_max, stays at lr = 2/lambda_max, "
                  "diverges for every lr > 2/lambda_max",
                  ", ".join(f"f={r[0]}: {r[5]}" for r in rows))
    checks.expect(worst <= 1e-7,
                  "quadratic: every logged J - J* equals 0.5 sum_i lambda_i (1 - lr lambda_i)^(2k) c_i^2",
                  f"largest relative difference {worst:.2g} (float64)")
    return results, {"lam_max": lam_max, "j_star": j_star, "eigenvalues": eigenvalues, "c0": c0}


@dataclass
class Remedy:
    """One network run: a label, the config fields that make it, and whether it is a remedy."""

    label: str
    fields: dict
    remedy: bool = True


def network_runs(lr: float, args: argparse.Namespace, steps: int, every: int) -> list[Remedy]:
    """The diverging run, each remedy, and the guard with its default detection for contrast."""
    tracked = {"sharpness_every": every, "sharpness_iters": 12}
    stop = {"nonfinite_policy": "stop"}
    return [
        Remedy(f"GD, lr = {DIVERGING_FACTOR:g} x 2/sharpness", dict(lr=lr, **stop, **tracked), remedy=False),
        Remedy(f"+ lr decay exp:{args.decay:g}", dict(lr=lr, schedule=f"exp:{args.decay:g}", **stop, **tracked)),
        Remedy(f"+ clipping ||g|| <= {args.clip_norm:g}", dict(lr=lr, clip_norm=args.clip_norm, **stop, **tracked)),
        Remedy("Adam, lr 1e-3", dict(optimizer="adam", lr=1e-3, **stop)),
        Remedy("RMSprop, lr 1e-3", dict(optimizer="rmsprop", lr=1e-3, **stop)),
        Remedy("+ guard rollback, divergence at 10 x J0",
               dict(lr=lr, nonfinite_policy="rollback", divergence_factor=10.0, **tracked)),
        Remedy("+ guard rollback, default divergence 1e6 x J0",
               dict(lr=lr, nonfinite_policy="rollback", **tracked), remedy=False),
    ]


def event_summary(events: list[dict], limit: int = 4) -> str:
    """The run's events as 'step kind' pairs, repeated kinds counted, at most ``limit`` shown."""
    parts: list[str] = []
    counts: dict[str, int] = {}
    for e in events:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
        if counts[e["kind"]] == 1:
            parts.append(f"{e['step']} {e['kind']}")
    repeats = [f"{k} x{n}" for k, n in counts.items() if n > 1]
    text = ", ".join(parts[:limit]) + (", ..." if len(parts) > limit else "")
    return text + (f" ({', '.join(repeats)})" if repeats else "") if parts else "none"


def network_part(args: argparse.Namespace, steps: int, checks: Checks) -> tuple[list, float]:
    """A diverging tanh network and each remedy; returns (label, result, rescued) and 2/sharpness."""
    probe = prepare(RunConfig(**NETWORK, steps=1))
    probe.model.eval()
    lam0 = sharpness(probe.model, probe.loss_fn, probe.data.X_train, probe.data.y_train).values[0]
    threshold = 2.0 / lam0
    lr = DIVERGING_FACTOR * threshold
    every = max(1, steps // 15)
    outcomes = []
    for remedy in network_runs(lr, args, steps, every):
        result = run(RunConfig(**NETWORK, steps=steps, **remedy.fields))
        first = train_losses(result)[1][0]
        final = result.final["train_loss"]
        rescued = (result.final["status"] == "completed" and final is not None and math.isfinite(final)
                   and final < RESCUED_FRACTION * first)
        outcomes.append((remedy, result, rescued))
    print_table(
        f"{NETWORK['model']} on '{NETWORK['task']}' ({probe.data.n_train} rows): sharpness at init "
        f"{lam0:.4g}, 2/sharpness = {threshold:.4g}, diverging lr = {lr:.4g}; {steps} steps",
        ["run", "status", "steps", "final lr", "final loss", "rescued", "events (step kind)"],
        [[r.label, res.final["status"], int(res.final["step"]), res.final["final_lr"],
          res.final["train_loss"], "yes" if ok else "no", event_summary(res.events)]
         for r, res, ok in outcomes],
    )
    for remedy, result, _ in outcomes:
        print(f"events of '{remedy.label}':")
        for e in result.events[:6]:
            print(f"  step {e['step']}: {e['kind']}: {e['detail']}")
        if len(result.events) > 6:
            print(f"  ... {len(result.events) - 6} more")

    baseline = outcomes[0][1]
    checks.expect(baseline.final["status"] == "diverged",
                  f"the network diverges at lr = {DIVERGING_FACTOR:g} x 2/sharpness with plain GD",
                  f"status {baseline.final['status']} at step {baseline.final['step']}: "
                  f"{event_summary(baseline.events)}")
    for remedy, result, ok in outcomes:
        if remedy.remedy:
            checks.expect(ok, f"remedy '{remedy.label}' rescues the run (completes, final loss < "
                              f"{RESCUED_FRACTION:g} x initial loss)",
                          f"status {result.final['status']}, final loss {result.final['train_loss']:.4g}, "
                          f"initial {train_losses(result)[1][0]:.4g}")
    kinds = {remedy.label: {e["kind"] for e in result.events} for remedy, result, _ in outcomes}
    decay_label, clip_label, guard_label = (outcomes[i][0].label for i in (1, 2, 5))
    checks.expect("sharpness_below_2_over_lr" in kinds[decay_label],
                  "the decay run's events show the lr falling below the threshold (sharpness < 2/lr)",
                  ", ".join(sorted(kinds[decay_label])))
    checks.expect("clip" in kinds[clip_label] and "rollback" in kinds[guard_label],
                  "clipping and the rollback report their events (clip, loss_exploding + rollback)",
                  f"clip run: {sorted(kinds[clip_label])}; guard run: {sorted(kinds[guard_label])}")
    return outcomes, threshold


def plot_quadratics(theta_results: dict, quad_results: dict, quad: dict, out: Path) -> None:
    fig = Figure(figsize=(12, 5.2))
    ax_theta, ax_quad = fig.subplots(1, 2)
    colors = {f: c for f, c in zip(LR_FACTORS, ("#1b9e77", "#66a61e", "#7570b3", "black", "#e7298a", "#d95f02", "#a6761d"))}
    for factor, result in theta_results.items():
        k, loss = train_losses(result)
        keep = loss > 0
        ax_theta.semilogy(k[keep], loss[keep], color=colors[factor], label=f"lr = {factor:g}")
    ax_theta.set_ylim(1e-30, 1e12)  # lr 0.5 lands on theta = 0 at step 1; lr 0.9 falls far below
    ax_theta.set_xlabel("step k")
    ax_theta.set_ylabel("J(theta_k) = theta_k^2")
    ax_theta.set_title("J(theta) = theta^2: threshold 2/J'' = 1 exactly")
    ax_theta.legend(fontsize=8, ncol=2, loc="lower right")
    ax_theta.grid(True, alpha=0.3)

    lam, c0, j_star = quad["eigenvalues"], quad["c0"], quad["j_star"]
    for factor in (0.9, 0.99, 1.01, 1.1):
        result = quad_results[factor]
        k, loss = train_losses(result)
        lr = factor * 2.0 / quad["lam_max"]
        kk = np.arange(0, k[-1] + 1)
        exact = 0.5 * ((1.0 - lr * lam)[None, :] ** (2 * kk[:, None]) * lam * c0 ** 2).sum(axis=1)
        excess = loss - j_star
        keep = excess > 0
        ax_quad.semilogy(k[keep], excess[keep], color=colors[factor], lw=2.5, alpha=0.55,
                         label=f"gdlab, lr = {factor:g} x 2/lambda_max")
        ax_quad.semilogy(kk, exact, "--", color="black", lw=0.8)
    ax_quad.plot([], [], "--", color="black", lw=0.8, label="closed form sum_i lambda_i (1 - lr lambda_i)^2k c_i^2 / 2")
    ax_quad.set_ylim(1e-18, None)
    ax_quad.set_xlabel("step k  (the flat floor at 1e-17 is float64 rounding of J)")
    ax_quad.set_ylabel("J(theta_k) - J*")
    ax_quad.set_title(f"Least squares, lambda_max = {quad['lam_max']:.4g}: 2/lambda_max = {2 / quad['lam_max']:.4g}")
    ax_quad.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax_quad.grid(True, alpha=0.3)
    save_figure(fig, out, "07_stability_threshold")


def plot_remedies(outcomes: list, threshold: float, out: Path) -> None:
    fig = Figure(figsize=(12.5, 5.6))
    ax_loss, ax_lr = fig.subplots(1, 2)
    palette = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f")
    first_loss = train_losses(outcomes[0][1])[1][0]
    for (remedy, result, ok), color in zip(outcomes, palette):
        k, loss = train_losses(result)
        style = "-" if ok else ":"
        baseline = remedy is outcomes[0][0]
        # The diverging run is drawn on top and thicker: the default-guard run repeats its first steps.
        ax_loss.semilogy(k, loss, style, color=color, lw=2.5 if baseline else 1.3, zorder=3 if baseline else 2,
                         label=f"{remedy.label} ({'rescued' if ok else 'not rescued'})")
        if remedy.fields.get("optimizer", "gd") != "gd":
            continue
        logged = [r for r in result.history if r.get("lr") is not None]
        ax_lr.semilogy([r["step"] for r in logged], [r["lr"] * (r.get("clip_factor") or 1.0) for r in logged],
                       style, color=color, lw=2.5 if baseline else 1.3, zorder=3 if baseline else 2)
        points = [(s["step"], 2.0 / s["value"]) for s in result.diagnostics.get("sharpness", [])
                  if s["value"] and s["value"] > 0]
        if points:
            ax_lr.semilogy(*zip(*points), "o", color=color, ms=3.5)
    ax_loss.axhline(RESCUED_FRACTION * first_loss, color="black", lw=0.8, ls="--",
                    label=f"rescued: below {RESCUED_FRACTION:g} x initial loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("full-batch training loss (mse)")
    ax_loss.set_title("Training loss (a diverged run ends at its last good step)")
    ax_loss.grid(True, alpha=0.3)
    ax_lr.axhline(threshold, color="black", lw=0.8, ls="-.", label="2 / sharpness at initialisation")
    ax_lr.plot([], [], "o", color="gray", ms=3.5, label="2 / sharpness measured along a GD run (its colour)")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("step size used: lr x clip factor")
    ax_lr.set_title("GD runs: step size against 2/sharpness (stable below)")
    ax_lr.grid(True, alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    more_handles, more_labels = ax_lr.get_legend_handles_labels()
    fig.legend(handles + more_handles, labels + more_labels, loc="lower center", ncol=3, fontsize=7.5)
    fig.subplots_adjust(bottom=0.27, wspace=0.25)
    save_figure(fig, out, "07_remedies")


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    torch.set_num_threads(1)
    checks = Checks()
    # Quick: fewer network steps (the quadratics are cheap either way); the same checks hold.
    quadratic_steps = 600
    network_steps = 150 if args.quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        theta_results = theta_squared_part(Path(tmp), quadratic_steps, checks)
        quad_results, quad = quadratic_part(Path(tmp), quadratic_steps, checks)
    outcomes, threshold = network_part(args, network_steps, checks)
    plot_quadratics(theta_results, quad_results, quad, args.out)
    plot_remedies(outcomes, threshold, args.out)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

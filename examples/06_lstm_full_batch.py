"""Case 6: an LSTM trained by true full-batch gradient descent, against the mini-batches of 32 a
framework's `fit` would silently use.

Task: forecast the next value of a sine wave from 20 noisy values (gdlab's `sine` task), model
`lstm:32x1`. Four runs with the same budget of gradient evaluations (epochs = rows whose gradient
was computed / N), each at the best of a 3-point learning-rate grid (gdlab.tune, final training
loss): full-batch GD and full-batch GD with momentum 0.9, both on the exact gradient accumulated
over chunks of 64 sequences, and mini-batch GD (B = 32) with and without momentum.

Checks: the chunked full-batch step is the exact gradient (its first update against a float64
autograd pass over the whole set); full batch takes 1 update per epoch and B = 32 takes ceil(N/32);
momentum lowers the full-batch loss; the full-batch LSTM has learnt to forecast (test loss below a
tenth of always predicting the mean; the least-squares linear forecaster on the 20 lags, numpy
lstsq, is printed beside it). Memory: the peak resident memory of one gradient
evaluation, measured in a fresh process (Linux VmHWM after resetting it through
/proc/self/clear_refs), must stay flat in N when chunked while the unchunked gradient grows with N.

    python examples/06_lstm_full_batch.py [--quick] [--out DIR] [--chunk-size ROWS]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _shared import Checks, parse_args, positive_int, print_table, proc_status_mib, save_figure
from matplotlib.figure import Figure

from gdlab.config import RunConfig
from gdlab.engine import full_batch_loss_and_grad
from gdlab.run import RunResult, prepare, run
from gdlab.tune import search_learning_rate

MODEL = "lstm:32x1"
BATCH = 32  # what Keras' fit and most DataLoader examples use when no batch size is given
MOMENTUM = 0.9
TRIALS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk-size", type=positive_int, default=64,
                        help="sequences per forward/backward pass of the full-batch gradient (default 64)")
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Setting:
    """One way of training: a label, the update rule, the regime and its learning-rate range."""

    label: str
    optimizer: str
    regime: str
    lr_low: float
    lr_high: float

    @property
    def full(self) -> bool:
        return self.regime == "full"


SETTINGS = (
    Setting("full batch, GD", "gd", "full", 0.3, 3.0),
    Setting(f"full batch, momentum {MOMENTUM:g}", "momentum", "full", 0.1, 1.0),
    Setting(f"mini-batch {BATCH}, GD", "gd", "minibatch", 0.1, 1.0),
    Setting(f"mini-batch {BATCH}, momentum {MOMENTUM:g}", "momentum", "minibatch", 0.03, 0.3),
)


def config(setting: Setting, lr: float, n_samples: int, epochs: float, chunk: int) -> RunConfig:
    """The run of ``setting``: chunked exact gradients for full batch, B = 32 rows otherwise."""
    return RunConfig(
        task="sine", model=MODEL, n_samples=n_samples, optimizer=setting.optimizer, lr=lr,
        optimizer_params={"momentum": MOMENTUM} if setting.optimizer == "momentum" else {},
        regime=setting.regime, batch_size=None if setting.full else BATCH, chunk_size=chunk,
        # deterministic: no engine choice made from timings, so every run takes the same code path
        max_epochs=epochs, nonfinite_policy="stop", deterministic=True,
    )


def tuned_run(setting: Setting, n_samples: int, epochs: float, chunk: int) -> tuple[RunResult, list]:
    """The run at the lr of a 3-point log grid with the lowest final training loss, and the trials."""
    results: dict[float, RunResult] = {}

    def evaluate(_trial: int, lr: float) -> float | None:
        result = run(config(setting, lr, n_samples, epochs, chunk))
        results[lr] = result
        loss = result.final["train_loss"]
        return None if result.final["status"] == "diverged" or not math.isfinite(loss) else loss

    search = search_learning_rate("grid", TRIALS, setting.lr_low, setting.lr_high, evaluate)
    if search.best_lr is None:
        raise SystemExit(f"every learning rate of '{setting.label}' diverged: {search.trials}")
    return results[search.best_lr], search.trials


def first_update_error(setting: Setting, lr: float, n_samples: int, chunk: int) -> tuple[float, int]:
    """Relative difference between the first GD update / lr of a float64 chunked full-batch run and
    the gradient of the whole training set in one autograd pass written out by hand; and the rows
    in that gradient."""
    prepared = prepare(config(setting, lr, n_samples, 1, chunk).replace(dtype="float64"))
    reference = copy.deepcopy(prepared.model)
    X, y = prepared.data.X_train, prepared.data.y_train
    loss = 0.5 * ((reference(X) - y) ** 2).sum(dim=1).mean()  # J = 1/(2N) sum ||f - y||^2
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    before = [p.detach().clone() for p in prepared.model.parameters()]
    result = run(prepared.config, prepared=prepared)
    step = torch.cat([((b - a.detach()) / lr).ravel() for b, a in zip(before, result.model.parameters())])
    exact = torch.cat([g.ravel() for g in grads])
    return float((step - exact).norm() / exact.norm()), int(X.shape[0])


def linear_forecaster_losses(n_samples: int) -> tuple[float, float]:
    """Train and test loss (0.5 mean squared error) of the least-squares linear forecaster on the
    20 lags plus an intercept (numpy lstsq), on the same split the LSTM uses."""
    data = prepare(RunConfig(task="sine", model=MODEL, n_samples=n_samples, steps=1)).data

    def design(X: torch.Tensor) -> np.ndarray:
        lags = X.double().numpy()[:, :, 0]
        return np.column_stack([lags, np.ones(len(lags))])

    y_train, y_test = data.y_train.double().numpy(), data.y_test.double().numpy()
    w, *_ = np.linalg.lstsq(design(data.X_train), y_train, rcond=None)
    return (0.5 * float(np.mean((design(data.X_train) @ w - y_train) ** 2)),
            0.5 * float(np.mean((design(data.X_test) @ w - y_test) ** 2)))


def measure_memory(specs: list[dict]) -> list[tuple[float, int]]:
    """Peak extra resident memory (MiB) of the first gradient evaluation of each run config in
    ``specs``, in this process, and the run's training rows N. The step's rows (all N, or one
    batch) go through two identical passes and the second is measured, so that one-off
    allocations are excluded; peak = VmHWM after resetting it (Linux)."""
    peaks = []
    for fields in specs:
        prepared = prepare(RunConfig(**fields))
        X, y = prepared.data.X_train, prepared.data.y_train
        idx = prepared.schedule.next_indices()
        Xb, yb = (X, y) if idx is None else (X[idx], y[idx])
        # The same pass once before measuring: what one step of a training loop costs, without the
        # one-off allocations of the first pass.
        full_batch_loss_and_grad(prepared.model, prepared.loss_fn, Xb, yb, chunk_size=prepared.chunk_size)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = proc_status_mib("VmRSS")
        full_batch_loss_and_grad(prepared.model, prepared.loss_fn, Xb, yb, chunk_size=prepared.chunk_size)
        peaks.append((proc_status_mib("VmHWM") - before, int(X.shape[0])))
        del prepared, X, y, Xb, yb
        gc.collect()
    return peaks


def memory_in_child(specs: list[dict], out: Path) -> list[tuple[float, int]] | None:
    """Run :func:`measure_memory` in a fresh Python process; None where /proc is unavailable."""
    if not (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")):
        return None
    # A fixed mmap threshold makes glibc return every freed tensor to the OS, so that measurements
    # made one after another in the child do not reuse each other's memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--out", str(out), "--measure-memory", json.dumps(specs)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"memory measurement failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_part(n_samples: int, chunk: int, out: Path, checks: Checks) -> dict[str, dict[int, float]] | None:
    """Peak memory of one gradient evaluation, unchunked, chunked and mini-batch, at n_samples and
    10 x n_samples sequences (MiB by label and training rows N), with its checks."""
    gd, minibatch = SETTINGS[0], SETTINGS[2]
    specs, labels = [], []
    for n in (n_samples, 10 * n_samples):
        full = config(gd, 1.0, n, 1, chunk).to_dict()
        # One chunk of n rows holds all N training rows (the engine caps a chunk at N).
        for label, fields in (("full batch,\nunchunked", {**full, "chunk_size": n}),
                              (f"full batch,\nchunks of {chunk}", full),
                              (f"mini-batch\nB = {BATCH}", config(minibatch, 0.1, n, 1, chunk).to_dict())):
            specs.append(fields)
            labels.append(label)
    measured = memory_in_child(specs, out)
    if measured is None:
        checks.expect(False, "peak memory measured", "needs Linux /proc/self/clear_refs; not available here")
        return None
    memory: dict[str, dict[int, float]] = {}
    for label, (peak, rows) in zip(labels, measured):
        memory.setdefault(label, {})[rows] = peak
    names = list(memory)
    small, large = sorted(memory[names[0]])
    print_table("Peak extra resident memory of one gradient evaluation (MiB; fresh process, VmHWM)",
                ["gradient", f"N = {small}", f"N = {large}", "ratio"],
                [[name.replace("\n", " "), memory[name][small], memory[name][large],
                  memory[name][large] / memory[name][small]] for name in names])
    unchunked, chunked, batch = (memory[name] for name in names)
    checks.expect(chunked[large] <= 1.5 * chunked[small] + 1.0,
                  "the chunked full-batch gradient's memory stays flat when N grows 10x",
                  f"{chunked[small]:.3g} -> {chunked[large]:.3g} MiB")
    checks.expect(unchunked[large] >= 5 * unchunked[small] and chunked[large] <= 0.1 * unchunked[large],
                  "without chunks the memory grows with N; chunking cuts it by 10x or more",
                  f"unchunked {unchunked[small]:.3g} -> {unchunked[large]:.3g} MiB, "
                  f"chunked {chunked[large]:.3g} MiB, mini-batch {batch[large]:.3g} MiB")
    return memory


def train_curve(result: RunResult, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(r[x_key], r["train_loss"]) for r in result.history if r.get("train_loss") is not None]
    return tuple(np.array(v, dtype=float) for v in zip(*rows))


def plot(results: dict[str, RunResult], memory: dict | None, reference: float, n_train: int, out: Path) -> None:
    fig = Figure(figsize=(15, 4.5))
    ax_epochs, ax_time, ax_mem = fig.subplots(1, 3)
    styles = {s.label: ("-" if s.full else "--") for s in SETTINGS}
    for label, result in results.items():
        lr = result.config["lr"]
        for ax, key in ((ax_epochs, "epochs"), (ax_time, "wall_time_s")):
            x, loss = train_curve(result, key)
            ax.semilogy(x, loss, styles[label], label=f"{label} (lr {lr:.3g})")
    for ax in (ax_epochs, ax_time):
        ax.axhline(reference, color="gray", lw=0.8, ls=":", label="linear forecaster (lstsq), train")
        ax.set_ylabel("full-batch training loss, 0.5 (f - y)^2")
        ax.grid(True, alpha=0.3)
    ax_epochs.set_xlabel("epochs = gradient evaluations / N")
    ax_epochs.set_title(f"{MODEL} on sine forecasting, N = {n_train}")
    ax_epochs.legend(fontsize=7.5)
    ax_time.set_xlabel("training wall time (s)")
    ax_time.set_title("The same runs against wall time")
    if memory is None:
        ax_mem.text(0.5, 0.5, "peak memory needs Linux /proc", ha="center", transform=ax_mem.transAxes)
    else:
        labels = list(memory)
        ns = sorted({n for values in memory.values() for n in values})
        width = 0.8 / len(ns)
        for i, n in enumerate(ns):
            heights = [memory[label][n] for label in labels]
            bars = ax_mem.bar(np.arange(len(labels)) + i * width, heights, width, label=f"N = {n} sequences")
            ax_mem.bar_label(bars, fmt="%.3g", fontsize=7)
        ax_mem.set_xticks(np.arange(len(labels)) + width * (len(ns) - 1) / 2, labels, fontsize=8)
        ax_mem.set_yscale("log")
        ax_mem.set_ylabel("peak extra memory of one gradient (MiB)")
        ax_mem.set_title("Memory of one gradient evaluation")
        ax_mem.legend(fontsize=8)
    save_figure(fig, out, "06_lstm_full_batch")


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.measure_memory is not None:
        torch.set_num_threads(1)
        print(json.dumps(measure_memory(json.loads(args.measure_memory))))
        return 0
    torch.set_num_threads(1)
    checks = Checks()
    # Quick: fewer sequences and epochs; the same checks, with the reference relaxed (see below).
    n_samples, epochs = (200, 30) if args.quick else (1000, 300)
    chunk = args.chunk_size

    gd = SETTINGS[0]
    error, rows = first_update_error(gd, 1.0, n_samples, chunk)
    checks.expect(error <= 1e-10,
                  f"the chunked full-batch step (chunks of {chunk}) is the exact gradient of all {rows} sequences",
                  f"float64 run: first update / lr vs one autograd pass over the whole set, relative "
                  f"difference {error:.2g}")

    results, trials = {}, {}
    for setting in SETTINGS:
        results[setting.label], trials[setting.label] = tuned_run(setting, n_samples, epochs, chunk)
    n_train = results[gd.label].final["n_train"]
    lin_train, lin_test = linear_forecaster_losses(n_samples)
    print_table(
        f"{MODEL} on sine forecasting: N = {n_train} training sequences of 20 steps, {epochs:g} epochs "
        f"each, lr = best of a {TRIALS}-point grid",
        ["run", "lr", "updates", "epochs", "train time (s)", "train loss", "test loss", "lr grid (final loss)"],
        [[label, r.config["lr"], int(r.final["step"]), r.final["epochs"], r.final["wall_time_s"],
          r.final["train_loss"], r.final["test_loss"],
          ", ".join(f"{lr:.3g}: {'diverged' if v is None else f'{v:.3g}'}" for _, lr, v in trials[label])]
         for label, r in results.items()]
        + [["linear forecaster (numpy lstsq, 21 weights)", "-", "-", "-", "-", lin_train, lin_test, "-"]],
    )

    per_epoch = math.ceil(n_train / BATCH)
    counts_ok = all(r.final["step"] == (epochs if s.full else epochs * per_epoch) and r.final["epochs"] == epochs
                    for s, r in zip(SETTINGS, results.values()))
    checks.expect(counts_ok,
                  f"every run spent {epochs:g} epochs: full batch 1 update per epoch, B = {BATCH} "
                  f"ceil({n_train}/{BATCH}) = {per_epoch} updates per epoch",
                  ", ".join(f"{label}: {int(r.final['step'])} updates" for label, r in results.items()))
    full_gd, full_mom = results[SETTINGS[0].label], results[SETTINGS[1].label]
    checks.expect(full_mom.final["train_loss"] < full_gd.final["train_loss"],
                  "momentum on top of the exact full-batch gradient lowers the training loss (same epochs)",
                  f"{full_mom.final['train_loss']:.4g} vs {full_gd.final['train_loss']:.4g}")
    best_full = min((full_gd, full_mom), key=lambda r: r.final["train_loss"])
    y_train = prepare(config(gd, 1.0, n_samples, 1, chunk)).data.y_train.double().numpy()
    mean_loss = 0.5 * float(np.var(y_train))  # always predicting the training mean
    # Quick (30 epochs on 160 sequences) only has to beat the mean predictor itself.
    fraction = 1.0 if args.quick else 0.1
    checks.expect(best_full.final["test_loss"] < fraction * mean_loss,
                  f"the full-batch LSTM has learnt to forecast: test loss below {fraction:g} x that of "
                  "predicting the training mean",
                  f"test loss {best_full.final['test_loss']:.4g} vs {fraction:g} x {mean_loss:.4g}; "
                  f"linear lstsq forecaster {lin_test:.4g}")

    memory = memory_part(n_samples, chunk, args.out, checks)
    plot(results, memory, lin_train, n_train, args.out)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

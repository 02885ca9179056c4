"""Case 8: image classification with CNNs, six optimizers compared with the same budget.

Tasks: scikit-learn's 8x8 digits and MNIST-1D (Greydanus 2020; 4000 training and 1000 test signals
of length 40, generated locally), both with gdlab's LeNet-style CNN (`cnn:lenet`, 2-D on digits,
1-D on MNIST-1D). Optimizers: batch GD (exact full-batch gradient), full-batch Adam, and, with
mini-batches of 100 (the MNIST-1D reference recipe), SGD, momentum 0.9, Adam and RMSprop.

The comparison is a gdlab study (gdlab.study, see docs/studies.md): every optimizer gets the same
3-point learning-rate grid search and the same budget per run in epochs (gradient evaluations / N),
picks its lr by final training loss (never by test accuracy), and re-runs it with a fresh seed. The
table and figure give test accuracy, training time, and time and epochs to a test-accuracy target.

Checks against references outside gdlab: scikit-learn's LogisticRegression on the same split gets
the published 32% on MNIST-1D (so the local data are the benchmark's) and ~97% on digits; Adam's
CNN reaches the published CNN accuracy on MNIST-1D, 94%, within 2 points, and is within 3 points of
logistic regression on digits; tuned batch GD's gap to Adam at the same budget is reported, and
also what it reaches given Adam's wall time instead.

    python examples/08_image_classification.py [--quick] [--out DIR] [--workers K]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _shared import Checks, parse_args, positive_int, print_table, save_figure
from matplotlib.figure import Figure

from gdlab.data import load_task
from gdlab.run import RunResult, run
from gdlab.store import RunStore, StoredRun
from gdlab.study.metrics import Target
from gdlab.study.execute import run_study
from gdlab.study.spec import StudySpec, check_study_runs, parse_study
from gdlab.study.summary import summarize_study

PUBLISHED = {"logistic": 0.32, "cnn": 0.94}  # MNIST-1D test accuracy, Greydanus (2020), README table
TUNING_SEED = 100
BATCH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="study worker processes (default 2, quick 1)")
    parser.add_argument("--adam-lr", type=float, nargs=2, default=(3.3e-3, 3e-2), metavar=("LOW", "HIGH"),
                        help="learning-rate search range of mini-batch Adam (default 0.0033 0.03)")


def study_definition(quick: bool, adam_range: tuple[float, float], workers: int) -> dict:
    """The study as gdlab's study-file mapping (the YAML of docs/studies.md, written as a dict)."""
    mb = {"regime": "minibatch", "batch_size": BATCH}
    optimizers = [
        {"name": "batch-gd", "optimizer": "gd", "regime": "full", "lr": {"low": 0.3, "high": 3.0}},
        {"name": "adam-full", "optimizer": "adam", "regime": "full", "lr": {"low": 1e-3, "high": 0.1}},
        {"name": f"sgd-{BATCH}", "optimizer": "gd", **mb, "lr": {"low": 0.03, "high": 3.0}},
        {"name": f"momentum-{BATCH}", "optimizer": "momentum", **mb, "lr": {"low": 3e-3, "high": 0.3}},
        {"name": f"adam-{BATCH}", "optimizer": "adam", **mb, "lr": {"low": adam_range[0], "high": adam_range[1]}},
        {"name": f"rmsprop-{BATCH}", "optimizer": "rmsprop", **mb, "lr": {"low": 1e-3, "high": 1e-2}},
    ]
    if quick:
        # Quick: two optimizers, smaller sets, a few epochs: the same checks with looser thresholds.
        optimizers = [optimizers[0], optimizers[4]]
    sizes = {"digits": 500, "mnist1d": 1000} if quick else {"digits": None, "mnist1d": 5000}
    epochs = {"digits": 12, "mnist1d": 12} if quick else {"digits": 30, "mnist1d": 60}
    tasks = [
        {"name": "digits-cnn", "task": "digits", "model": "cnn:lenet", "n_samples": sizes["digits"],
         "budget": {"epochs": epochs["digits"]}, "target": {"test_accuracy": 0.95}},
        {"name": "mnist1d-cnn", "task": "mnist1d", "model": "cnn:lenet", "n_samples": sizes["mnist1d"],
         "budget": {"epochs": epochs["mnist1d"]}, "target": {"test_accuracy": 0.9}},
    ]
    for task in tasks:
        if task["n_samples"] is None:
            del task["n_samples"]
    return {"name": "case8-image-classification", "workers": workers, "seeds": [0],
            "tuning": {"sampler": "grid", "trials": 2 if quick else 3, "seed": TUNING_SEED},
            "tasks": tasks, "optimizers": optimizers}


def logistic_accuracy(spec: StudySpec, task_index: int) -> float:
    """Test accuracy of scikit-learn's LogisticRegression on the split the study's runs use."""
    from sklearn.linear_model import LogisticRegression

    fields = spec.tasks[task_index].run_fields
    data = load_task(fields["task"], seed=TUNING_SEED, n_samples=fields.get("n_samples"))
    clf = LogisticRegression(max_iter=3000).fit(data.X_train.numpy(), data.y_train.numpy())
    return float(clf.score(data.X_test.numpy(), data.y_test.numpy()))


def equal_time_run(spec: StudySpec, task_index: int, best_lr: float, seconds: float) -> RunResult:
    """Batch GD at its tuned lr, stopped by Adam's training wall time instead of the epoch budget."""
    task = spec.tasks[task_index]
    opt = next(o for o in spec.optimizers if o.name == "batch-gd")
    config = spec.run_config(task, opt, best_lr, seed=0).replace(max_epochs=None, time_budget_s=seconds)
    return run(config)


def grid_cells(points: list[dict]) -> list[str]:
    """The tuning trials of one optimizer, each as 'lr: final training loss' (or 'diverged')."""
    return [f"{p['lr']:.2g}: " + ("diverged" if p["final_train_loss"] is None else f"{p['final_train_loss']:.3g}")
            for p in points]


def final_runs(runs: list[StoredRun]) -> dict[tuple[str, str], StoredRun]:
    return {(r.task, r.optimizer): r for r in runs if r.phase == "final"}


def accuracy_curve(history: list[dict], x_key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(r[x_key], r["test_accuracy"]) for r in history if r.get("test_accuracy") is not None]
    return tuple(np.array(v, dtype=float) for v in zip(*rows)) if rows else (np.zeros(0), np.zeros(0))


def plot(spec: StudySpec, finals: dict, references: dict, extra: dict, out: Path) -> None:
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    axes = fig.subplots(len(spec.tasks), 2)
    colors = dict(zip([o.name for o in spec.optimizers],
                      ("#d62728", "#ff7f0e", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd")))
    for row, task in zip(axes, spec.tasks):
        for opt in spec.optimizers:
            record = finals.get((task.name, opt.name))
            if record is None:
                continue
            style = "-" if opt.regime == "full" else "--"
            for ax, key in zip(row, ("epochs", "wall_time_s")):
                x, acc = accuracy_curve(record.history, key)
                if key == "wall_time_s":
                    keep = x > 0
                    x, acc = x[keep], acc[keep]
                ax.plot(x, 100 * acc, style, color=colors[opt.name], label=f"{opt.name} (lr {record.lr:.3g})")
        if task.name in extra:
            x, acc = accuracy_curve(extra[task.name].history, "wall_time_s")
            keep = x > 0
            row[1].plot(x[keep], 100 * acc[keep], ":", color=colors["batch-gd"], lw=2,
                        label="batch-gd for Adam-100's time")
        for ax in row:
            ax.axhline(100 * references[task.name], color="black", lw=0.8, ls=":",
                       label="scikit-learn logistic regression")
            if task.name.startswith("mnist1d"):
                ax.axhline(100 * PUBLISHED["cnn"], color="black", lw=0.8, ls="-.", label="published CNN (94%)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(True, which="both", alpha=0.3)
        row[0].set_xlabel("epochs = gradient evaluations / N")
        row[0].set_title(f"{task.name}: budget {task.budget.epochs:g} epochs per run")
        row[1].set_xscale("log")
        row[1].set_xlabel("training wall time (s, log scale)")
        row[1].set_title(f"{task.name}: the same runs against time")
    # One legend for all panels: every run and reference line, once.
    handles: dict[str, object] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label.split(" (lr")[0], handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=5, fontsize=8)
    save_figure(fig, out, "08_image_classification")


def print_results(spec: StudySpec, summary: dict, finals: dict, extra: dict, references: dict) -> None:
    """One table per task (ranked by final training loss, plus the equal-time batch GD run and the
    scikit-learn reference) and one of its learning-rate grid."""
    for task in spec.tasks:
        rows = []
        for entry in summary["ranking"][task.name]:
            record = finals[(task.name, entry["optimizer"])]
            to_time, to_evals = entry["time_to_target"], entry["evals_to_target"]
            rows.append([
                entry["optimizer"], entry["best_lr"], 100 * record.final["test_accuracy"],
                record.final["train_loss"], record.final["wall_time_s"], record.final["epochs"],
                "never" if to_time["median"] is None else f"{to_time['median']:.3g}",
                "never" if to_evals["median"] is None else f"{to_evals['median']:.3g}",
            ])
        more = extra[task.name]
        rows.append(["batch-gd, Adam's time", more.config["lr"], 100 * more.final["test_accuracy"],
                     more.final["train_loss"], more.final["wall_time_s"], more.final["epochs"], "-", "-"])
        rows.append(["scikit-learn logistic regression", "-", 100 * references[task.name], "-", "-", "-", "-", "-"])
        print_table(f"{task.name}: {task.budget.epochs:g} epochs per run, lr = best of {spec.trials} by final "
                    f"training loss; target {task.target_metric} >= {task.target_value:g}",
                    ["optimizer", "lr", "test acc (%)", "train loss", "train time (s)", "epochs",
                     "time to target (s)", "epochs to target"], rows)
        print_table(f"{task.name}: the learning-rate grid, final training loss of each trial",
                    ["optimizer", *[f"trial {i + 1}" for i in range(spec.trials)]],
                    [[name, *grid_cells(points)] for name, points in summary["sensitivity"][task.name].items()])


def check_outcomes(spec: StudySpec, runs: list[StoredRun], finals: dict, extra: dict, references: dict,
                   quick: bool, checks: Checks) -> None:
    """The self-checks of case 8 against scikit-learn, the published MNIST-1D accuracies and the
    study's own protocol (equal trials, budgets respected)."""
    digits, mnist = (t.name for t in spec.tasks)
    adam = f"adam-{BATCH}"
    checks.expect(abs(references[mnist] - PUBLISHED["logistic"]) <= 0.06,
                  "MNIST-1D generated here is the benchmark's: logistic regression gets the published 32% (+-6)",
                  f"scikit-learn LogisticRegression {100 * references[mnist]:.1f}% on "
                  f"{finals[(mnist, adam)].final['n_train']} training rows")
    adam_mnist = finals[(mnist, adam)].final["test_accuracy"]
    # Quick (800 rows, 12 epochs) asks for 1.5 x the logistic accuracy instead of the published 94%.
    needed = 1.5 * references[mnist] if quick else PUBLISHED["cnn"] - 0.02
    checks.expect(adam_mnist >= needed,
                  f"Adam ({adam}) on the MNIST-1D CNN reaches {100 * needed:.0f}% test accuracy"
                  + ("" if quick else " (published CNN 94%, within 2 points)"),
                  f"{100 * adam_mnist:.1f}%")
    adam_digits = finals[(digits, adam)].final["test_accuracy"]
    margin = 0.15 if quick else 0.03
    checks.expect(adam_digits >= references[digits] - margin,
                  f"Adam's CNN on digits is within {100 * margin:.0f} points of scikit-learn's logistic regression",
                  f"{100 * adam_digits:.1f}% vs {100 * references[digits]:.1f}%")
    gd_mnist = finals[(mnist, "batch-gd")].final["test_accuracy"]
    checks.expect(gd_mnist < adam_mnist,
                  "at the same epochs, tuned batch GD stays below Adam on MNIST-1D (the gap is reported)",
                  f"batch GD {100 * gd_mnist:.1f}% (lr {finals[(mnist, 'batch-gd')].lr:.3g}), Adam "
                  f"{100 * adam_mnist:.1f}%; with Adam's time batch GD gets "
                  f"{100 * extra[mnist].final['test_accuracy']:.1f}% in {extra[mnist].final['epochs']:.0f} epochs")
    budget = {t.name: t.budget.epochs for t in spec.tasks}
    within_budget = all(r.final["epochs"] <= budget[r.task] + 1e-9 for r in runs)
    trials = [sum(1 for r in runs if (r.task, r.optimizer, r.phase) == (t.name, o.name, "tune"))
              for t in spec.tasks for o in spec.optimizers]
    checks.expect(within_budget and set(trials) == {spec.trials},
                  f"every optimizer had {spec.trials} tuning runs and no run exceeded its task's epoch budget",
                  f"{len(runs)} stored runs, tuning runs per pair: {sorted(set(trials))}")


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if not 0 < args.adam_lr[0] < args.adam_lr[1]:
        print(f"error: --adam-lr needs 0 < LOW < HIGH, got {args.adam_lr[0]:g} {args.adam_lr[1]:g}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    checks = Checks()
    workers = args.workers or (1 if args.quick else 2)
    spec = parse_study(study_definition(args.quick, tuple(args.adam_lr), workers), source="case 8")
    check_study_runs(spec)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "case8.db"
        run_study(spec, store_path, workers=workers)
        with RunStore(store_path) as store:
            runs = store.runs(study=spec.name)
    targets = {t.name: Target(t.target_metric, t.target_value) for t in spec.tasks}
    summary = summarize_study(runs, targets)
    finals = final_runs(runs)
    references = {task.name: logistic_accuracy(spec, i) for i, task in enumerate(spec.tasks)}
    extra = {task.name: equal_time_run(spec, i, finals[(task.name, "batch-gd")].lr,
                                       finals[(task.name, f"adam-{BATCH}")].final["wall_time_s"])
             for i, task in enumerate(spec.tasks)}
    print_results(spec, summary, finals, extra, references)
    check_outcomes(spec, runs, finals, extra, references, args.quick, checks)
    plot(spec, finals, references, extra, args.out)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

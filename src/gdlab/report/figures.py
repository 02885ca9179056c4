"""Figures of a study as PNG images: learning curves, learning-rate sensitivity, performance
profiles and stability traces, each drawn with matplotlib's object API (no pyplot state)."""

from __future__ import annotations

import concurrent.futures as cf
import io
import math
import multiprocessing
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from gdlab.store.records import StoredRun

FIGSIZE = (7.0, 4.5)
WIDE_FIGSIZE = (9.0, 4.5)
DPI = 110
GRID_POINTS = 200
PROFILE_SECTION = "performance profiles"
STABILITY_SECTION = "stability traces"
# Diverging losses run off to 1e30 and beyond; the plot stops at this multiple of the largest
# initial loss so the converging curves keep their resolution.
DIVERGED_CAP_FACTOR = 10.0

_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.titlepad": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
}
_PROFILE_LINESTYLES = ("-", "--", "-.", ":")
_Made = tuple[str, str, str, bytes]
_Groups = dict[str, list[StoredRun]]


@dataclass
class Figure:
    """One report figure: ``section`` groups figures in the report, ``name`` is the file stem
    (``[a-z0-9_-]``), ``png`` the encoded image."""

    section: str
    name: str
    title: str
    caption: str
    png: bytes


def task_section(task: str) -> str:
    """The report section that holds a task's figures and ranking table."""
    return f"task: {task}"


def slug(text: str) -> str:
    """``text`` reduced to a file-name stem of ``[a-z0-9_-]`` characters."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "x"


def ordered_names(listed: Sequence[str], seen: Iterable[str]) -> list[str]:
    """``listed`` in its order, then names from ``seen`` that it lacks, in first-seen order."""
    return list(dict.fromkeys([*listed, *seen]))


def optimizer_colors(optimizers: Sequence[str]) -> dict[str, str]:
    """One colour (hex) per optimizer, in ``optimizers`` order, the same in every figure."""
    cmap = matplotlib.colormaps["tab10" if len(optimizers) <= 10 else "tab20"]
    count, hsv, spread = cmap.N, matplotlib.colormaps["hsv"], max(1, len(optimizers) - cmap.N)
    return {name: to_hex(cmap(i) if i < count else hsv((i - count) / spread)) for i, name in enumerate(optimizers)}


def study_figures(runs: list[StoredRun], summary: dict[str, Any], workers: int | None = None) -> list[Figure]:
    """Every figure of a study's report, in report order.

    Per task (section ``"task: NAME"``): training loss vs gradient evaluations / N and vs wall time (s), test
    accuracy vs wall time (classification), final training loss vs learning rate. Then the performance profiles,
    then (when the final runs recorded them) gradient norms and sharpness against 2/lr per task (section
    ``"stability traces"``). Curves use the ``final`` runs (the ``single`` ones when a task has no final runs);
    sensitivity uses ``summary["sensitivity"]``. The tasks are drawn in ``workers`` processes (default: one per CPU,
    at most 4, from three tasks on; 1: in this one), the same images either way.
    """
    tasks = ordered_names(summary.get("tasks", []), (r.task for r in runs))
    optimizers = ordered_names(summary.get("optimizers", []), (r.optimizer for r in runs))
    colors = optimizer_colors(optimizers)
    jobs = [([r for r in runs if r.task == task], summary, optimizers, colors, task) for task in tasks]
    drawn = _draw_all([*jobs, ([], summary, optimizers, colors, None)], workers)
    used: set[str] = set()
    figures: list[Figure] = []
    stability: list[Figure] = []

    def add(into: list[Figure], section: str, made: _Made | None, stem: str = "") -> None:
        if made is None:
            return
        suffix, title, caption, png = made
        name, k = stem + suffix, 2
        while name in used:
            name, k = f"{stem}{suffix}-{k}", k + 1
        used.add(name)
        into.append(Figure(section, name, title, caption, png))

    for task, (own, traces) in zip(tasks, drawn):
        for made in own:
            add(figures, task_section(task), made, f"{slug(task)}_")
        for made in traces:
            add(stability, STABILITY_SECTION, made, f"{slug(task)}_")
    for made in drawn[-1][0]:
        add(figures, PROFILE_SECTION, made)
    return figures + stability


def _draw(job: tuple[list[StoredRun], dict[str, Any], list[str], dict[str, str], str | None]
          ) -> tuple[list[_Made | None], list[_Made | None]]:
    """One task's figures and its stability traces, or (task None) the performance profiles."""
    runs, summary, optimizers, colors, task = job
    with matplotlib.rc_context(_STYLE):
        if task is None:
            return [_profile_figure(summary, optimizers, colors)], []
        groups = _curve_groups(runs, task, optimizers)
        target = summary.get("targets", {}).get(task)
        return ([_loss_figure(task, groups, colors, target, "epochs"),
                 _loss_figure(task, groups, colors, target, "wall_time_s"),
                 _accuracy_figure(task, groups, colors, target),
                 _sensitivity_figure(task, summary, optimizers, colors)],
                [_grad_norm_figure(task, groups, colors), _sharpness_figure(task, groups, colors)])


def _draw_all(jobs: list[Any], workers: int | None) -> list[tuple[list[_Made | None], list[_Made | None]]]:
    """:func:`_draw` of every job, in order, in a pool of fresh processes (matplotlib draws in one thread, a figure
    in about half a second, a process starts in about one) or in this one."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(jobs) > 3 else 1
    if min(workers, len(jobs)) < 2:
        return [_draw(job) for job in jobs]
    with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_draw, jobs))


def _curve_groups(runs: Sequence[StoredRun], task: str, optimizers: Sequence[str]) -> _Groups:
    mine = [r for r in runs if r.task == task]
    chosen = [r for r in mine if r.phase == "final"] or [r for r in mine if r.phase == "single"]
    groups = {opt: [r for r in chosen if r.optimizer == opt] for opt in optimizers}
    return {opt: group for opt, group in groups.items() if group}


def _new_figure(figsize: tuple[float, float] = FIGSIZE) -> MplFigure:
    fig = MplFigure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    return buffer.getvalue()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(history: Sequence[dict[str, Any]], x_key: str, y_key: str,
            positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``history`` where both keys hold finite numbers (and y > 0 if ``positive``), sorted by x."""
    points = []
    for record in history:
        x, y = _number(record.get(x_key)), _number(record.get(y_key))
        if x is not None and y is not None and (y > 0 or not positive):
            points.append((x, y))
    points.sort(key=lambda p: p[0])
    array = np.asarray(points, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _has_series(groups: _Groups, x_key: str, y_key: str, positive: bool = False) -> bool:
    return any(_series(run.history, x_key, y_key, positive)[0].size
               for group in groups.values() for run in group)


class Band(NamedTuple):
    """Curves summarised on a common x grid: median, min, max and how many curves cover each x."""

    grid: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray


def _band(curves: Sequence[tuple[np.ndarray, np.ndarray]], log: bool) -> Band:
    """Median, min and max over curves on a common x grid; each curve counts only within its own x range. With
    ``log`` the interpolation is done on log10(y), straight lines on a log axis.

    A curve also covers one of its own logging intervals past its last point (holding its last value): seeds logged
    at different steps end a fraction of an interval apart, and without the slack the median would jump at the very
    end as runs drop out.
    """
    lo_x = min(x[0] for x, _ in curves)
    hi_x = max(x[-1] for x, _ in curves)
    grid = np.linspace(lo_x, hi_x, GRID_POINTS) if hi_x > lo_x else np.array([lo_x])
    stack = np.full((len(curves), grid.size), np.nan)
    for i, (x, y) in enumerate(curves):
        slack = float(np.median(np.diff(x))) if x.size > 1 else 0.0
        values = np.interp(grid, x, np.log10(y) if log else y)
        values[(grid < x[0]) | (grid > x[-1] + slack)] = np.nan
        stack[i] = values
    count = (~np.isnan(stack)).sum(axis=0)
    covered = count > 0
    grid, stack, count = grid[covered], stack[:, covered], count[covered]
    med, low, high = (reduce(stack, axis=0) for reduce in (np.nanmedian, np.nanmin, np.nanmax))
    if log:
        med, low, high = 10.0 ** med, 10.0 ** low, 10.0 ** high
    return Band(grid, med, low, high, count)


def _diverged(run: StoredRun) -> bool:
    return run.final.get("status") == "diverged"


def _format(value: float) -> str:
    return f"{value:.3g}"


_X_LABELS = {"epochs": "gradient evaluations / N (epochs)", "wall_time_s": "training wall time (s)"}


def _draw_curves(ax: Axes, groups: _Groups, colors: dict[str, str], x_key: str, y_key: str,
                 log: bool, cap: bool) -> tuple[int, int]:
    """Per optimizer: median line and min-max band over its runs that did not diverge; each diverged run drawn
    alone, dotted, with a × at its last finite point (a blow-up in one seed would otherwise swamp the band).
    Returns (optimizers drawn, diverged runs drawn)."""
    drawn = diverged_count = 0
    ends: list[tuple[str, float, float]] = []
    firsts: list[float] = []
    for opt, group in groups.items():
        color, curves, n_diverged = colors[opt], [], 0
        for run in group:
            x, y = _series(run.history, x_key, y_key, positive=log)
            if not x.size:
                continue
            firsts.append(y[0])
            if _diverged(run):
                n_diverged += 1
                ax.plot(x, y, linestyle=":", linewidth=1.2, color=color)
                ends.append((opt, x[-1], y[-1]))
            else:
                curves.append((x, y))
        if not curves and not n_diverged:
            continue
        label = f"{opt} (median of {len(curves)})" if curves else opt
        if n_diverged:
            label += f", {n_diverged} diverged (dotted)"
        if curves:
            band = _band(curves, log)
            if band.grid.size > 1:
                ax.fill_between(band.grid, band.low, band.high, color=color, alpha=0.18, linewidth=0)
                _plot_median(ax, band, len(curves), color, label)
            else:
                ax.plot(band.grid, band.median, "o", color=color, label=label)
        else:
            ax.plot([], [], linestyle=":", color=color, label=label)
        drawn += 1
        diverged_count += n_diverged
    if not drawn:
        return 0, 0
    top = None
    if cap and firsts and log:
        top = DIVERGED_CAP_FACTOR * max(firsts)
        if ax.get_ylim()[1] > top:
            ax.set_ylim(top=top)
    for opt, x, y in ends:
        shown = min(y, top) if top is not None else y
        ax.plot([x], [shown], "x", color=colors[opt], markersize=10, markeredgewidth=2.2,
                clip_on=False, zorder=5)
    return drawn, diverged_count


def _plot_median(ax: Axes, band: Band, n_curves: int, color: str, label: str) -> None:
    """Solid where every curve contributes, dashed where some runs have already ended (there the median is of fewer
    runs and may jump as they drop out)."""
    full = band.count == n_curves
    partial = ~full
    # Widen the dashed mask by one point each side so the two pieces join without a gap.
    joined = partial | np.roll(partial, 1) | np.roll(partial, -1)
    joined[0] |= partial[0]
    joined[-1] |= partial[-1]
    ax.plot(band.grid, np.where(full, band.median, np.nan), color=color, linewidth=1.8, label=label)
    if partial.any():
        ax.plot(band.grid, np.where(joined, band.median, np.nan), color=color, linewidth=1.2,
                linestyle="--", alpha=0.8)


def _legend_extras(diverged: int, target_label: str | None) -> list[Line2D]:
    extras = []
    if target_label:
        extras.append(Line2D([], [], color="0.25", linestyle="--", linewidth=1, label=target_label))
    if diverged:
        extras.append(Line2D([], [], color="0.3", marker="x", linestyle="", markersize=8,
                             markeredgewidth=2, label="diverged run (last finite value)"))
    return extras


def _finish(ax: Axes, suffix: str, title: str, xlabel: str, ylabel: str, caption: str,
            extras: Sequence[Line2D] = (), loc: str = "best") -> _Made:
    """Label and title the axes, add the legend (the plotted handles, then ``extras``) and encode the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + list(extras), loc=loc, framealpha=0.85)
    return suffix, title, caption, _png(ax.figure)


def _target_line(ax: Axes, target: dict[str, Any] | None, metric: str) -> str | None:
    """Draw the target level when ``target`` is one on ``metric``; return its legend label."""
    value = _number(target.get("value")) if target and target.get("metric") == metric else None
    if value is None or (value <= 0 and metric != "test_accuracy"):  # a log axis cannot show it
        return None
    ax.axhline(value, color="0.25", linestyle="--", linewidth=1)
    return f"target {value:.1%}" if metric == "test_accuracy" else f"target {_format(value)}"


def _target_text(target: dict[str, Any] | None) -> str:
    if not target or _number(target.get("value")) is None:
        return ""
    metric, value = target.get("metric"), float(target["value"])
    shown = f"≥ {value:.1%}" if metric == "test_accuracy" else f"≤ {_format(value)}"
    return f" Target: {metric} {shown}."


TIME_LOG_SPAN = 100.0


def _x_axis(ax: Axes, groups: _Groups, x_key: str, y_key: str) -> str:
    """Linear x from 0, except wall time spanning more than two decades across optimizers (a stochastic run can
    take 1000x a full-batch one): then log x, so both stay readable. Returns the axis label."""
    if x_key == "wall_time_s":
        times = [x for group in groups.values() for run in group
                 for x in _series(run.history, x_key, y_key)[0] if x > 0]
        if times and max(times) / min(times) > TIME_LOG_SPAN:
            ax.set_xscale("log")
            ax.set_xlim(left=min(times) / 1.5)
            return _X_LABELS[x_key] + " (log scale)"
    ax.set_xlim(left=0)
    return _X_LABELS[x_key]


def _loss_figure(task: str, groups: _Groups, colors: dict[str, str], target: dict[str, Any] | None,
                 x_key: str) -> _Made | None:
    if not groups:
        return None
    ax = _new_figure().add_subplot()
    ax.set_yscale("log")
    drawn, diverged = _draw_curves(ax, groups, colors, x_key, "train_loss", log=True, cap=True)
    if not drawn:
        return None
    target_label = _target_line(ax, target, "train_loss")
    xlabel = _x_axis(ax, groups, x_key, "train_loss")
    measure = "gradient evaluations" if x_key == "epochs" else "wall time"
    seeds = max(len(g) for g in groups.values())
    caption = (
        f"Full-batch training loss of the final runs (each optimizer at its tuned setting) against "
        f"{_X_LABELS[x_key]}. Line: median over up to {seeds} seeds, interpolated onto a common "
        f"grid (dashed where some seeds have already ended); band: min-max over seeds. Diverged "
        f"runs are left out of the median and drawn dotted, a cross where each last had a finite "
        f"loss (at the top edge when beyond the plotted range).{_target_text(target)}"
    )
    return _finish(ax, "loss_vs_epochs" if x_key == "epochs" else "loss_vs_time",
                   f"{task}: training loss vs {measure}", xlabel, "training loss (log scale)", caption,
                   _legend_extras(diverged, target_label))


def _accuracy_figure(task: str, groups: _Groups, colors: dict[str, str],
                     target: dict[str, Any] | None) -> _Made | None:
    if not _has_series(groups, "wall_time_s", "test_accuracy"):
        return None
    ax = _new_figure().add_subplot()
    _, diverged = _draw_curves(ax, groups, colors, "wall_time_s", "test_accuracy", log=False, cap=False)
    target_label = _target_line(ax, target, "test_accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.02)
    xlabel = _x_axis(ax, groups, "wall_time_s", "test_accuracy")
    caption = (
        "Accuracy on the held-out test set of the final runs against training wall time (s). "
        f"Line: median over seeds (dashed where some have already ended); band: min-max; diverged "
        f"runs dotted, ending in a cross.{_target_text(target)}"
    )
    return _finish(ax, "accuracy_vs_time", f"{task}: test accuracy vs wall time", xlabel,
                   "test accuracy (% correct)", caption, _legend_extras(diverged, target_label),
                   loc="lower right")


TOP_EDGE = 0.96
BOTTOM_EDGE = 0.04


def _same_lr(a: float, b: float) -> bool:
    return abs(math.log(a / b)) < 1e-6


def _sensitivity_figure(task: str, summary: dict[str, Any], optimizers: Sequence[str],
                        colors: dict[str, str]) -> _Made | None:
    per_opt = summary.get("sensitivity", {}).get(task) or {}
    if not any(per_opt.values()):
        return None
    best = {entry.get("optimizer"): _number(entry.get("best_lr"))
            for entry in summary.get("ranking", {}).get(task, [])}
    ax = _new_figure().add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    edge = ax.get_xaxis_transform()
    finite_losses: list[float] = []
    failed = zero = chosen_drawn = False
    for opt in ordered_names(optimizers, per_opt):
        color = colors.get(opt, "0.4")
        ok, diverged, zeros = [], [], []
        for trial in per_opt.get(opt) or []:
            lr, loss = _number(trial.get("lr")), _number(trial.get("final_train_loss"))
            if lr is None or lr <= 0:
                continue
            if trial.get("status") == "diverged" or loss is None:
                diverged.append(lr)
            elif loss <= 0:
                zeros.append(lr)
            else:
                ok.append((lr, loss))
        if not (ok or diverged or zeros):
            continue
        ok.sort()
        chosen = best.get(opt)
        label = opt if chosen is None else f"{opt} (chosen lr {_format(chosen)})"
        ax.plot([p[0] for p in ok], [p[1] for p in ok], "o-", color=color, markersize=4, linewidth=1.4,
                label=label)
        finite_losses.extend(p[1] for p in ok)
        if diverged:
            ax.plot(diverged, [TOP_EDGE] * len(diverged), "x", color=color, markersize=9,
                    markeredgewidth=2, transform=edge, clip_on=False, zorder=5)
            failed = True
        if zeros:
            ax.plot(zeros, [BOTTOM_EDGE] * len(zeros), "v", color=color, markersize=8,
                    transform=edge, clip_on=False, zorder=5)
            zero = True
        if chosen is None or chosen <= 0:
            continue
        star = dict(marker="*", markersize=16, markerfacecolor=color, markeredgecolor="black",
                    markeredgewidth=1.0, linestyle="", zorder=6)
        at_point = [loss for lr, loss in ok if _same_lr(lr, chosen)]
        if at_point:
            ax.plot([chosen], at_point[:1], **star)
        else:
            # At an edge: the bottom one for a zero loss, else the top one (a line if not a trial).
            at_zero = any(_same_lr(lr, chosen) for lr in zeros)
            if not at_zero and not any(_same_lr(lr, chosen) for lr in diverged):
                ax.axvline(chosen, color=color, linestyle="--", linewidth=1.0)
            ax.plot([chosen], [BOTTOM_EDGE if at_zero else TOP_EDGE], transform=edge, clip_on=False,
                    **star)
        chosen_drawn = True
    if finite_losses:
        # Headroom beyond the data keeps the edge markers clear of the curves.
        low, high = min(finite_losses), max(finite_losses)
        ax.set_ylim(low / (30.0 if zero else 2.0), high * (30.0 if failed else 3.0))
    markers = ((chosen_drawn, dict(marker="*", markersize=12, color="0.6", markeredgecolor="black",
                                   label="chosen lr")),
               (failed, dict(marker="x", markersize=8, markeredgewidth=2, color="0.3",
                             label="diverged trial (top edge)")),
               (zero, dict(marker="v", markersize=7, color="0.3", label="final loss 0 (bottom edge)")))
    caption = (
        "Final training loss of every learning-rate search trial (same trial budget for each "
        "optimizer). Stars mark the learning rate chosen for the final runs; crosses at the top "
        "edge mark trials that diverged or ended without a finite loss."
        + (" Triangles at the bottom edge mark trials whose final loss was exactly 0, which a log "
           "axis cannot show." if zero else "")
        + " A wide, flat valley means the optimizer is easy to tune."
    )
    return _finish(ax, "lr_sensitivity", f"{task}: learning-rate sensitivity", "learning rate (log scale)",
                   "final training loss (log scale)", caption,
                   [Line2D([], [], linestyle="", **style) for shown, style in markers if shown])


def _profile_figure(summary: dict[str, Any], optimizers: Sequence[str],
                    colors: dict[str, str]) -> _Made | None:
    profiles = summary.get("profiles") or {}
    panels = [("time", "time to target", "time"), ("evals", "gradient evaluations to target", "evaluations")]
    present = [(key, label, short) for key, label, short in panels
               if (profiles.get(key) or {}).get("taus") and (profiles.get(key) or {}).get("curves")]
    if not present:
        return None
    fig = _new_figure(WIDE_FIGSIZE)
    axes = fig.subplots(1, len(present), sharey=True, squeeze=False)[0]
    for ax, (key, label, short) in zip(axes, present):
        taus = np.asarray([_number(t) for t in profiles[key]["taus"]], dtype=float)
        curves = profiles[key]["curves"]
        for i, opt in enumerate(ordered_names(optimizers, curves)):
            if opt not in curves:
                continue
            rho = np.asarray([_number(v) for v in curves[opt]], dtype=float)
            n = min(rho.size, taus.size)
            ax.step(taus[:n], rho[:n], where="post", color=colors.get(opt, "0.4"), linewidth=2,
                    alpha=0.9, linestyle=_PROFILE_LINESTYLES[i % len(_PROFILE_LINESTYLES)], label=opt)
        if np.all(taus[np.isfinite(taus)] > 0):
            ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(f"τ: ratio to the best {short} (log scale)")
        ax.set_title(f"Profile of {label}")
    axes[0].set_ylabel("ρ(τ): fraction of tasks solved")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
    title = "Performance profiles"
    fig.suptitle(title)
    caption = (
        "Dolan-Moré performance profiles: for each optimizer, the fraction of tasks on which it "
        "reached the target within a factor τ of the fastest optimizer on that task, measured in "
        "wall time (left) and gradient evaluations / N (right). Higher and further left is better; "
        "the value at τ = 1 is the fraction of tasks it won, the right end the fraction it solved."
    )
    return "performance_profiles", title, caption, _png(fig)


def _grad_norm_figure(task: str, groups: _Groups, colors: dict[str, str]) -> _Made | None:
    if not _has_series(groups, "epochs", "grad_norm", positive=True):
        return None
    ax = _new_figure().add_subplot()
    ax.set_yscale("log")
    _, diverged = _draw_curves(ax, groups, colors, "epochs", "grad_norm", log=True, cap=False)
    ax.set_xlim(left=0)
    caption = (
        "Euclidean norm of the gradient each step used, along the final runs: the exact "
        "full-batch gradient for full-batch methods, the mini-batch (or one-sample) gradient for "
        "the others, whose noise keeps it high even at a minimum. Median over seeds, band min-max. "
        "A full-batch norm that falls by decades means convergence; one that grows by decades "
        "signals instability (crosses: diverged runs)."
    )
    return _finish(ax, "grad_norm", f"{task}: gradient norm", _X_LABELS["epochs"],
                   "norm of the step's gradient (log scale)", caption, _legend_extras(diverged, None))


def _diagnostic_series(run: StoredRun, name: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(_number(p.get("step")), _number(p.get("value")))
              for p in (run.record.get("diagnostics") or {}).get(name) or []]
    points = sorted((s, v) for s, v in points if s is not None and v is not None)
    array = np.asarray(points, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _steps_to_epochs(run: StoredRun, steps: np.ndarray) -> np.ndarray:
    """Diagnostics are keyed by step; place them on the epochs axis through the run's history."""
    known, epochs = _series(run.history, "step", "epochs")
    return steps if known.size < 2 else np.interp(steps, known, epochs)


def _threshold_series(run: StoredRun) -> tuple[np.ndarray, np.ndarray]:
    steps, values = _diagnostic_series(run, "two_over_lr")
    if steps.size:
        return steps, values
    steps, lrs = _series(run.history, "step", "lr", positive=True)
    if steps.size:
        return steps, 2.0 / lrs
    if run.lr and run.lr > 0:
        last = _number(run.final.get("step")) or 0.0
        return np.array([0.0, last]), np.array([2.0 / run.lr] * 2)
    return np.array([]), np.array([])


def _value_scale(values: np.ndarray) -> str:
    """"log" for positive values spanning more than a decade, "symlog" when such a span includes
    values <= 0, else "linear"."""
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    if positive.size == 0 or positive.max() / positive.min() <= 10:
        return "linear"
    return "log" if positive.size == values.size else "symlog"


def _sharpness_figure(task: str, groups: _Groups, colors: dict[str, str]) -> _Made | None:
    tracked = [(opt, run) for opt, group in groups.items() for run in group
               if _diagnostic_series(run, "sharpness")[0].size]
    if not tracked:
        return None
    ax = _new_figure().add_subplot()
    labelled: set[str] = set()
    values: list[float] = []
    counts = {opt: sum(o == opt for o, _ in tracked) for opt, _ in tracked}
    for opt, run in tracked:
        color = colors[opt]
        first = opt not in labelled
        labelled.add(opt)
        steps, sharp = _diagnostic_series(run, "sharpness")
        runs_note = f" ({counts[opt]} runs)" if counts[opt] > 1 else ""
        ax.plot(_steps_to_epochs(run, steps), sharp, "-", marker=".", color=color, linewidth=1.5,
                label=f"{opt}: sharpness{runs_note}" if first else None)
        values.extend(sharp)
        t_steps, threshold = _threshold_series(run)
        if t_steps.size:
            ax.plot(_steps_to_epochs(run, t_steps), threshold, "--", color=color, linewidth=1.2,
                    label=f"{opt}: 2/lr" if first else None)
            values.extend(threshold)
        if _diverged(run):
            ax.plot(_steps_to_epochs(run, steps[-1:]), sharp[-1:], "x", color=color,
                    markersize=10, markeredgewidth=2.2, zorder=5)
    scale = _value_scale(np.asarray(values, dtype=float))
    if scale == "log":
        ax.set_yscale("log")
    elif scale == "symlog":
        # Power iteration can return a value <= 0 (a negative dominant eigenvalue); symlog keeps
        # those visible while still spreading the decades above.
        ax.set_yscale("symlog", linthresh=float(np.max(np.abs(values))) * 1e-3)
    scale_note = "" if scale == "linear" else f" ({scale} scale)"
    ax.set_xlim(left=0)
    caption = (
        "Largest Hessian eigenvalue of the full-batch training loss (solid) against 2/lr (dashed, "
        "same colour) for the final runs that tracked it. Gradient descent with step lr on a "
        "quadratic is stable only while sharpness < 2/lr; a solid line reaching its dashed line is "
        "the edge of stability."
    )
    return _finish(ax, "sharpness", f"{task}: sharpness and the stability threshold 2/lr",
                   _X_LABELS["epochs"], f"sharpness $\\lambda_{{\\max}}$ and 2/lr{scale_note}", caption)

"""Performance profiles of Dolan and More (2002), "Benchmarking optimization software with
performance profiles": for each solver (optimizer), the fraction of tasks it solves within a
factor tau of the best solver's cost on that task."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_GRID_POINTS = 50


def _solvers(costs: dict[str, dict[str, float | None]]) -> list[str]:
    solvers: list[str] = []
    for per_solver in costs.values():
        solvers.extend(s for s in per_solver if s not in solvers)
    return solvers


def performance_ratios(costs: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """``ratios[task][solver] = cost / (least cost on that task)`` from ``costs[task][solver]``.

    A cost of None (or not finite) means "not solved" and gives ``math.inf``; so does a solver
    absent from a task's entry (solvers are the union over tasks). A task no solver solved is
    all inf. When the least cost is 0 (the target met at the start), solvers with cost 0 get 1
    and the others inf, the limit of the ratio. Negative costs are an error.
    """
    solvers = _solvers(costs)
    ratios: dict[str, dict[str, float]] = {}
    for task, per_solver in costs.items():
        solved: dict[str, float] = {}
        for solver in solvers:
            cost = per_solver.get(solver)
            if cost is None or not math.isfinite(cost):
                continue
            if cost < 0:
                raise ValueError(f"cost of solver {solver!r} on task {task!r} is negative ({cost})")
            solved[solver] = float(cost)
        best = min(solved.values(), default=None)
        row = {}
        for solver in solvers:
            if solver not in solved:
                row[solver] = math.inf
            elif best == 0:
                row[solver] = 1.0 if solved[solver] == 0 else math.inf
            else:
                row[solver] = solved[solver] / best
        ratios[task] = row
    return ratios


def default_taus(ratios: dict[str, dict[str, float]], points: int = DEFAULT_GRID_POINTS) -> list[float]:
    """A log-spaced grid from 1 to 1.1 x the largest finite ratio, merged with every finite ratio
    (where the profile steps, so a plot on this grid is exact); starts at exactly 1.0."""
    finite = {r for row in ratios.values() for r in row.values() if math.isfinite(r)}
    top = max(finite, default=1.0)
    grid = {float(t) for t in np.geomspace(1.0, 1.1 * top, points)}
    return sorted(grid | finite | {1.0})


def performance_profile(costs: dict[str, dict[str, float | None]],
                        taus: Sequence[float] | None = None) -> tuple[list[float], dict[str, list[float]]]:
    """``(taus, {solver: [rho_s(tau) for tau in taus]})`` with ``rho_s(tau)`` = the fraction of all
    tasks (unsolved ones included) whose performance ratio for ``s`` is ``<= tau``.

    ``costs`` as in :func:`performance_ratios`; ``taus`` default to :func:`default_taus`.
    """
    ratios = performance_ratios(costs)
    tau_list = default_taus(ratios) if taus is None else [float(t) for t in taus]
    n_tasks = len(ratios)
    curves: dict[str, list[float]] = {}
    for solver in _solvers(costs):
        solver_ratios = [row[solver] for row in ratios.values()]
        curves[solver] = [sum(r <= tau for r in solver_ratios) / n_tasks for tau in tau_list]
    return tau_list, curves

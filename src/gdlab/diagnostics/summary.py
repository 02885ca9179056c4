"""Plain-data summaries of a run record's stability diagnostics, for the CLI and reports."""

from __future__ import annotations

from typing import Any

PROBLEM_KINDS = (
    "nonfinite", "loss_exploding", "exploding", "vanishing", "rollback", "sharpness_above_2_over_lr",
)


def first_problem(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The earliest event (by step, then order) that signals a stability problem, or None."""
    problems = [e for e in events if e.get("kind") in PROBLEM_KINDS]
    if not problems:
        return None
    return min(problems, key=lambda e: (e["step"] if e["step"] is not None else 1 << 62))


def stability_side(sharpness: float, lr: float) -> str:
    """'stable' when sharpness < 2/lr (GD on the local quadratic model contracts), else 'unstable'."""
    return "stable" if sharpness * lr < 2.0 else "unstable"


def layer_rows(health: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per parameter tensor: first/last/min/max gradient norm and its flags."""
    if not health:
        return []
    flags = health.get("flags", {})
    rows = []
    for name, stats in health.get("layers", {}).items():
        marks = [kind for kind in ("vanishing", "exploding") if name in flags.get(kind, [])]
        rows.append({"layer": name, **{k: stats.get(k) for k in ("first", "last", "min", "max")},
                     "flags": marks})
    return rows


def sharpness_rows(diagnostics: dict[str, list[dict[str, Any]]], max_rows: int = 12) -> list[dict[str, Any]]:
    """Sharpness beside 2/lr over time, thinned to at most ``max_rows`` evenly spaced rows (first
    and last kept), each with its side of the threshold."""
    sharp = diagnostics.get("sharpness", [])
    bound = {r["step"]: r["value"] for r in diagnostics.get("two_over_lr", [])}
    if not sharp:
        return []
    if len(sharp) > max_rows:
        picks = sorted({round(i * (len(sharp) - 1) / (max_rows - 1)) for i in range(max_rows)})
        sharp = [sharp[i] for i in picks]
    rows = []
    for r in sharp:
        threshold = bound.get(r["step"])
        side = None
        if r["value"] is not None and threshold:
            side = "stable" if r["value"] < threshold else "unstable"
        rows.append({"step": r["step"], "sharpness": r["value"], "two_over_lr": threshold, "side": side})
    return rows

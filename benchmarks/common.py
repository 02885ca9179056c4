"""Shared pieces of the benchmark scripts: timing, the result row, the report and the CLI.

A benchmark measures its baselines in the same process, turns them into rows (mostly ratios,
unit ``"x"``) and hands them to :func:`report`, which prints one table and writes
``benchmarks/results/NAME.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).parent / "results"

_TARGET = re.compile(r"^\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a contender that returns its own wall time in seconds; its last result is kept
    as ``.last``."""
    def go() -> float:
        start = time.perf_counter()
        go.last = fn()  # type: ignore[attr-defined]
        return time.perf_counter() - start
    return go


def median_rounds(contenders: dict[str, Callable[[], float]], repeats: int, *, warmup: int = 1,
                  shuffle: bool = False) -> dict[str, float]:
    """Median of each contender's measurement (the seconds it returns) over ``repeats`` rounds
    after ``warmup`` untimed ones. Every round runs every contender once, so load changes hit them
    alike; with ``shuffle`` in a new (seeded) random order each round, so that no contender always
    follows the same one (what ran just before, the allocator state left by large chunks say,
    changes a time by several percent)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = random.Random(0)
    for round_ in range(warmup + repeats):
        names = list(contenders)
        if shuffle:
            order.shuffle(names)
        for name in names:
            value = contenders[name]()
            if round_ >= warmup:
                times[name].append(value)
    return {name: statistics.median(ts) for name, ts in times.items()}


@dataclass
class Row:
    """One line of a benchmark table.

    ``value`` is a ratio when ``unit == "x"``, otherwise a plain measurement in ``unit``
    (``"s"``, ``"MiB"``, ...). ``target`` is text such as ``"<= 1.05"``; ``ok`` is filled from it
    by :func:`report` when left as None.
    """

    benchmark: str
    case: str
    metric: str
    value: float
    unit: str = "x"
    target: str | None = None
    ok: bool | None = None
    note: str = ""


def check(value: float, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` (``"<= 1.05"``, ``">= 1.6"``, ``"< 2"``, ...).

    None when there is no target or the target text cannot be parsed.
    """
    if target is None:
        return None
    match = _TARGET.match(target)
    if match is None:
        return None
    op, bound_text = match.groups()
    try:
        bound = float(bound_text)
    except ValueError:
        return None
    compare = {
        "<=": value <= bound,
        ">=": value >= bound,
        "<": value < bound,
        ">": value > bound,
        "==": value == bound,
    }
    return bool(compare[op])


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and when a benchmark ran: date (UTC ISO), CPU, cores, threads, versions, device."""
    # Name the GPU only when this process used one, not merely because one is present.
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _format_value(row: Row) -> str:
    text = f"{row.value:.3g}"
    return f"{text}x" if row.unit == "x" else f"{text} {row.unit}"


def _json_row(row: Row) -> dict:
    """The row as a dict; a value that is not finite becomes null (NaN is not JSON)."""
    data = asdict(row)
    if not math.isfinite(data["value"]):
        data["value"] = None
    return data


def report(
    name: str,
    rows: list[Row],
    *,
    meta: dict | None = None,
    out_dir: Path = RESULTS_DIR,
) -> Path:
    """Print ``rows`` as a table and write ``out_dir/NAME.json``; return the JSON path.

    The JSON holds ``{"machine": machine_info(), "meta": meta, "rows": [row, ...]}``. A row whose
    ``ok`` is None but has a ``target`` gets ``ok`` from :func:`check`.
    """
    for row in rows:
        if row.ok is None and row.target is not None:
            row.ok = check(row.value, row.target)
    table = Table(title=name, box=box.SIMPLE_HEAD)
    for column in ("benchmark", "case", "metric", "value", "target", "ok", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        ok = "" if row.ok is None else ("yes" if row.ok else "NO")
        table.add_row(row.benchmark, row.case, row.metric, _format_value(row), row.target or "", ok, row.note)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
        console = Console(width=220)
    console.print(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    document = {"machine": machine_info(), "meta": meta, "rows": [_json_row(row) for row in rows]}
    # Write then rename, so an interrupted run never leaves a truncated result behind.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --quick, --repeats, --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (seconds, for tests)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default: per script)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"directory for NAME.json (default {RESULTS_DIR})")
    return parser

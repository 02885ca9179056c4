"""Full-batch step time with 1 and 2 processes (torchrun, gloo), as ratios measured in one run.

    python benchmarks/distributed.py [--quick] [--json PATH]

Each configuration trains the same model for the same full-batch steps through ``gdlab train``;
the time per step is the run record's training wall time (gradients and updates, evaluation
excluded) divided by the steps, the median of ``--repeats`` launches. Baselines: one process with
all threads, and one process with one thread (each rank of a torchrun job gets one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def time_per_step(args: list[str], nproc: int, threads: int | None, steps: int, repeats: int) -> float:
    """Median over ``repeats`` launches of training seconds per full-batch step."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            env = dict(os.environ)
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            train = ["-m", "gdlab", "train", *args, "--steps", str(steps), "--quiet", "--out", str(out)]
            if nproc == 1:
                cmd = [sys.executable, *train]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={nproc}", *train]
            subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=ROOT)
            final = json.loads((out / "run.json").read_text())["final"]
            times.append(final["wall_time_s"] / final["step"])
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer repeats")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    opts = parser.parse_args()
    n = 8000 if opts.quick else 40000
    steps, repeats = (5, 1) if opts.quick else (15, 2)
    cases = [
        ("mnist1d mlp 40-512-512-10", ["--task", "mnist1d", "--n-samples", str(n), "--model", "mlp:40-512-512-10:relu"]),
        ("digits mlp 64-128-10", ["--task", "digits", "--model", "mlp:64-128-10:relu"]),
    ]
    cores = os.cpu_count() or 1
    rows = []
    for name, args in cases:
        one_all = time_per_step(args, 1, None, steps, repeats)
        one_single = time_per_step(args, 1, 1, steps, repeats)
        two = time_per_step(args, 2, None, steps, repeats)
        rows.append({"case": name, "one_process_s": one_all, "one_process_one_thread_s": one_single,
                     "two_processes_s": two, "two_vs_one": two / one_all, "two_vs_one_thread": two / one_single})
    header = f"{'case':28} {'1 proc (s/step)':>16} {'1 proc 1 thread':>16} {'2 procs':>10} {'2 vs 1':>8} {'2 vs 1 thread':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:28} {r['one_process_s']:16.4g} {r['one_process_one_thread_s']:16.4g} "
              f"{r['two_processes_s']:10.4g} {r['two_vs_one']:7.2f}x {r['two_vs_one_thread']:13.2f}x")
    print(f"\n{cores} CPU cores; ratio < 1 means 2 processes are faster. Each rank of the 2-process job "
          "gets one thread (torchrun's default).")
    result = {"machine": platform.platform(), "cpu_count": cores, "torch": torch.__version__,
              "steps": steps, "repeats": repeats, "rows": rows}
    path = Path(opts.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

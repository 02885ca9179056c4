"""Cost of Hessian-vector products and of sharpness estimates, against one full-batch gradient.

For an MLP (64-128-10 relu) and a LeNet-style CNN on scikit-learn's digits (standardised; the CNN
views each sample as 1x8x8), at initialisation, this measures:

* the median wall time of one full-batch gradient (``gdlab.engine.full_batch_loss_and_grad``)
  and of one full-batch HVP (``HessianOperator.matvec``), both over the same chunks, and their
  ratio;
* for power iteration and Lanczos, the number of HVPs until the top-eigenvalue estimate is
  within 1e-3 (relative) of a reference (Lanczos with many iterations from another start), and
  the wall time of a run of exactly that many HVPs, in units of one full-batch gradient timed
  in alternation with it.

Every figure in the table is a count or a ratio against the gradient time measured in the same
run; the JSON also keeps the raw seconds.

    python benchmarks/sharpness.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gdlab.data.bundled import load_sklearn
from gdlab.diagnostics import HessianOperator, lanczos, power_iteration
from gdlab.engine import auto_chunk_size, full_batch_loss_and_grad
from gdlab.models import build_model, count_parameters
from gdlab.optim.losses import cross_entropy

TARGET = 1e-3
DEFAULT_JSON = Path(__file__).parent / "results" / "sharpness.json"

CASES = [
    ("mlp 64-128-10 relu", "mlp:64-128-10:relu", torch.float32),
    ("mlp 64-128-10 relu", "mlp:64-128-10:relu", torch.float64),
    ("cnn lenet 1x8x8", "cnn:lenet", torch.float32),
]


def median_seconds(fns: list[Callable[[], object]], warmup: int, repeats: int) -> list[float]:
    """Median wall time (s) of each of ``fns`` over ``repeats`` rounds after ``warmup`` rounds.

    The functions alternate within each round, so a load change on the machine affects all of
    them alike and their ratios stay meaningful.
    """
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def hvps_to_target(history: list[float], reference: float) -> int | None:
    """First iteration count (1-based) whose estimate is within TARGET of reference; None if never."""
    for i, value in enumerate(history):
        if abs(value - reference) <= TARGET * abs(reference):
            return i + 1
    return None


def digits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_sklearn("digits")
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    return torch.tensor(X, dtype=dtype), torch.tensor(y)


def run_case(
    label: str, spec: str, dtype: torch.dtype, *, repeats: int, solver_repeats: int,
    reference_iters: int, power_iters: int, lanczos_iters: int,
) -> dict:
    X, y = digits(dtype)
    model = build_model(spec, (64,), 10, image_shape=(1, 8, 8), dtype=dtype, seed=0)
    model.eval()
    chunk = auto_chunk_size(model, X)
    op = HessianOperator(model, cross_entropy, X, y, chunk_size=chunk)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def gradient() -> None:
        full_batch_loss_and_grad(model, cross_entropy, X, y, chunk_size=chunk)

    grad_s, hvp_s = median_seconds([gradient, lambda: op.matvec(v)], 2, repeats)

    reference = lanczos(op, iters=reference_iters, seed=1).values[0]
    solvers = {}
    for name, solve, max_iters in (
        ("power", lambda n: power_iteration(op, iters=n, tol=0.0), power_iters),
        ("lanczos", lambda n: lanczos(op, iters=n), lanczos_iters),
    ):
        count = hvps_to_target(solve(max_iters).history, reference)
        seconds = ratio = None
        if count is not None:
            solver_grad_s, seconds = median_seconds(
                [gradient, lambda: solve(count)], 0, solver_repeats
            )
            ratio = seconds / solver_grad_s
        solvers[name] = {"hvps": count, "max_hvps": max_iters, "seconds": seconds,
                         "gradient_equivalents": ratio}
    model.zero_grad(set_to_none=True)
    return {
        "case": label, "spec": spec, "dtype": str(dtype).replace("torch.", ""),
        "parameters": count_parameters(model), "samples": int(X.shape[0]), "chunk_size": chunk,
        "grad_seconds": grad_s, "hvp_seconds": hvp_s, "hvp_over_grad": hvp_s / grad_s,
        "reference_sharpness": reference, "reference_iters": reference_iters,
        "power": solvers["power"], "lanczos": solvers["lanczos"],
    }


def _fmt(value: float | int | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    header = ("case", "dtype", "params", "HVP/grad", "power HVPs", "power /grad",
              "Lanczos HVPs", "Lanczos /grad")
    lines = [header]
    for r in rows:
        lines.append((
            r["case"], r["dtype"], str(r["parameters"]), f"{r['hvp_over_grad']:.2f}x",
            _fmt(r["power"]["hvps"], "d"), _fmt(r["power"]["gradient_equivalents"], ".1f"),
            _fmt(r["lanczos"]["hvps"], "d"), _fmt(r["lanczos"]["gradient_equivalents"], ".1f"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and iterations (~20 s)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"output file (default {DEFAULT_JSON})"
    )
    args = parser.parse_args(argv)

    if args.quick:
        settings = dict(repeats=5, solver_repeats=2, reference_iters=50, power_iters=40,
                        lanczos_iters=25)
        cases = [CASES[0], CASES[2]]
    else:
        settings = dict(repeats=20, solver_repeats=5, reference_iters=150, power_iters=200,
                        lanczos_iters=60)
        cases = CASES
    start = time.perf_counter()
    rows = [run_case(*case, **settings) for case in cases]
    print(table(rows))
    print("\nHVP/grad: median time of one full-batch HVP over one full-batch gradient (same chunks).")
    print(f"HVPs: products until the top eigenvalue is within {TARGET:g} (relative) of Lanczos with "
          f"{settings['reference_iters']} iterations; /grad: wall time of that run in gradients.")

    record = {
        "benchmark": "sharpness", "target_relative_error": TARGET, "quick": args.quick,
        "settings": settings, "total_seconds": time.perf_counter() - start,
        "environment": {"torch": torch.__version__, "numpy": np.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads(),
                        "device": "cpu"},
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

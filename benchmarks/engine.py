"""Speed and memory of one full-batch gradient by ``gdlab.engine.full_batch_loss_and_grad``.

Case: an MLP 784-512-512-10 (relu, float32, 670k parameters), cross-entropy, random data
(N = 60,000 rows; ``--quick``: 8,192). One gradient by the engine with its default chunk size
(calibrated once, then cached) is timed against baselines measured in the same process, in
alternation (each round runs every contender once, in a random order, so load changes and the
allocator state left by the previous contender hit them alike), as medians over ``--repeats``
rounds (7; ``--quick``: 2) after one warm-up round:

* floor: one forward+backward over the whole set in one batch;
* hand loops: ``for chunk: loss = ce(model(Xc), yc) * len/N; loss.backward()`` with chunk sizes
  swept over powers of two (256 up to N), the best of them;
* naive: ``DataLoader(TensorDataset(X, y), batch_size=128)`` with a backward per batch;
* for information: the engine with ``autocast=torch.bfloat16`` (float32 parameters), and with
  ``accumulate=torch.float64`` (float32 chunk gradients summed in float64).

Memory: for N = 100,000 and 1,000,000 rows (``--quick``: 20,000 and 100,000, with a 32 MiB chunk
budget), a fresh subprocess builds the data, runs one gradient with the default chunk size (read
from a calibration cache that an earlier subprocess filled, even on a busy CPU, so that both use
the same size), and
reports its peak RSS (``resource.getrusage`` ``ru_maxrss``) minus its current RSS right after the
data were built (``/proc/self/statm``): the memory the gradient needs beyond the model and the
data. The ratio of the two is the row. The subprocesses run before this process builds anything
large, because a child's ``ru_maxrss`` starts from its parent's RSS at the fork, and with glibc's
mmap threshold fixed at 1 MiB, because its default dynamic threshold makes the peak of one and
the same run vary by a factor of up to 2 (the note gives one default-allocator pair as well).

Calibration: the time ``chunk_choice`` takes to time the candidates, with an empty cache.

``--smoke`` runs the smallest sizes that exercise every row (N = 8,192, memory at 10,000 and
40,000 rows, one round and no warm-up): the test suite's check of the script and its output, not
a measurement.

    python benchmarks/engine.py [--quick | --smoke] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import Row, base_parser, median_rounds, report, timed
from gdlab.engine import calibrate
from gdlab.engine.calibrate import DEFAULT_MEMORY_BUDGET_MB, auto_chunk_size, chunk_choice
from gdlab.engine.objective import full_batch_loss_and_grad

WIDTHS = (784, 512, 512, 10)
NAIVE_BATCH = 128
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
SIZES = {"full": {"n": 60_000, "memory": (100_000, 1_000_000), "budget_mb": None, "repeats": 7},
         "quick": {"n": 8_192, "memory": (20_000, 100_000), "budget_mb": 32.0, "repeats": 2},
         "smoke": {"n": 8_192, "memory": (10_000, 40_000), "budget_mb": 16.0, "repeats": 1, "warmup": 0}}


def make_model(seed: int = 0) -> nn.Module:
    """The MLP 784-512-512-10 (relu) in float32."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs (n, 784) and labels (n,) in [0, 10), written in place (no transient copy)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, WIDTHS[0], generator=g), torch.randint(0, WIDTHS[-1], (n,), generator=g)


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def hand_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int) -> None:
    """The plain chunked loop a user would write."""
    n = X.shape[0]
    for p in model.parameters():
        p.grad = None
    for start in range(0, n, chunk):
        Xc, yc = X[start:start + chunk], y[start:start + chunk]
        loss = ce(model(Xc), yc) * (len(Xc) / n)
        loss.backward()


def naive_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
    """A DataLoader over the tensors with a backward per batch of 128."""
    n = X.shape[0]
    for p in model.parameters():
        p.grad = None
    for Xc, yc in DataLoader(TensorDataset(X, y), batch_size=NAIVE_BATCH):
        loss = ce(model(Xc), yc) * (len(Xc) / n)
        loss.backward()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_mib() -> float:
    """Current resident set size, MiB (/proc/self/statm; elsewhere the peak so far, which equals it
    right after the data are built since nothing large was freed before)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mib()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def calibration_child(n: int, budget_mb: float | None) -> dict:
    """In a fresh process: calibrate the default chunk size for ``n`` rows into the cache, also
    when the CPU is busy (``busy_share=0``): the measured children need one and the same size,
    and a timing under load only makes it less than the fastest."""
    model = make_model()
    X, y = make_data(n)
    cap = auto_chunk_size(model, X, budget_mb or DEFAULT_MEMORY_BUDGET_MB)
    choice = calibrate.choose_chunk_size(model, ce, X, y, max_chunk=cap, busy_share=0.0)
    return {"n": n, "chunk_size": choice.size, "chunk_source": choice.source, "reason": choice.reason}


def memory_child(n: int, budget_mb: float | None) -> dict:
    """In a fresh process: RSS after the data are built, peak RSS after one default gradient."""
    model = make_model()
    X, y = make_data(n)
    after_data = rss_mib()
    peak_before = peak_rss_mib()
    # What the default path will use (from the cache this script filled, or timed now).
    choice = chunk_choice(model, ce, X, y, memory_budget_mb=budget_mb)
    res = full_batch_loss_and_grad(model, ce, X, y, memory_budget_mb=budget_mb)
    peak = peak_rss_mib()
    return {"n": n, "data_mib": (X.nbytes + y.nbytes) / 2**20, "rss_after_data_mib": after_data,
            "peak_rss_before_gradient_mib": peak_before, "peak_rss_mib": peak,
            "beyond_data_mib": peak - after_data, "chunk_size": choice.size, "chunk_source": choice.source,
            "num_chunks": res.num_chunks}


def measure_memory(n: int, budget_mb: float | None, cache: str, *, fixed_mmap_threshold: bool = True,
                   child: str = "--memory-child") -> dict:
    """Run :func:`memory_child` (or, with ``child="--calibration-child"``,
    :func:`calibration_child`) for ``n`` rows in a subprocess with calibration cache ``cache``.

    ``fixed_mmap_threshold``: glibc serves blocks >= 1 MiB by mmap and unmaps them when freed
    (``MALLOC_MMAP_THRESHOLD_``), so that the peak is the memory the gradient holds live; with its
    default dynamic threshold the same run peaks at, e.g., 41 or 72 MiB depending on the order
    of frees, whatever N.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), child, str(n)]
    if budget_mb is not None:
        cmd += ["--budget-mb", str(budget_mb)]
    env = {**os.environ, calibrate.CACHE_ENV: cache}
    if fixed_mmap_threshold:
        env[MMAP_THRESHOLD_ENV] = str(2**20)
    else:
        env.pop(MMAP_THRESHOLD_ENV, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for N={n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(size: str, repeats: int | None, out_dir: Path) -> Path:
    sizes = SIZES[size]
    quick = size != "full"
    n, budget_mb = sizes["n"], sizes["budget_mb"]
    repeats = repeats or sizes["repeats"]
    case = f"mlp784 N={n}"
    load_before = os.getloadavg()

    # Memory first, while this process is small: a child's ru_maxrss starts at its parent's RSS
    # at the fork. A first child calibrates into the children's own cache; the measured ones then
    # both read the same chunk size from it (their cache keys agree: both N exceed 4x the cap).
    n_small, n_big = sizes["memory"]
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-children-") as child_cache:
        warm = measure_memory(n_small, budget_mb, child_cache, child="--calibration-child")
        memory = {m: measure_memory(m, budget_mb, child_cache) for m in (n_small, n_big)}
        default_allocator = {} if quick else {
            m: measure_memory(m, budget_mb, child_cache, fixed_mmap_threshold=False) for m in (n_small, n_big)}
    small, big = memory[n_small], memory[n_big]

    model = make_model()
    X, y = make_data(n)
    calibrate.clear_memory_cache()
    choice = chunk_choice(model, ce, X, y)
    bf16_choice = chunk_choice(model, ce, X, y, autocast=torch.bfloat16)

    chunks = [c for c in (2**k for k in range(8, 16)) if c <= n]
    fns: dict[str, Callable[[], object]] = {
        "gdlab": lambda: full_batch_loss_and_grad(model, ce, X, y),
        "gdlab bf16": lambda: full_batch_loss_and_grad(model, ce, X, y, autocast=torch.bfloat16),
        "gdlab acc64": lambda: full_batch_loss_and_grad(model, ce, X, y, accumulate=torch.float64),
        "floor": lambda: hand_loop(model, X, y, n),
        "naive": lambda: naive_loop(model, X, y),
        **{f"hand {c}": (lambda c=c: hand_loop(model, X, y, c)) for c in chunks},
    }
    warmup = sizes.get("warmup", 1)
    seconds = median_rounds({name: timed(fn) for name, fn in fns.items()}, repeats, warmup=warmup, shuffle=True)
    best_chunk = min(chunks, key=lambda c: seconds[f"hand {c}"])
    best = seconds[f"hand {best_chunk}"]
    gdlab = seconds["gdlab"]

    gradient_equivalents = choice.seconds / gdlab

    chunk_note = f"chunk {choice.size} ({choice.source})"
    rows = [
        Row("engine", case, "gdlab / floor", gdlab / seconds["floor"], target="<= 0.9",
            note=f"gdlab {gdlab:.3g} s, {chunk_note}; one batch of N {seconds['floor']:.3g} s"),
        Row("engine", case, "gdlab / best hand loop", gdlab / best, target="<= 1.05",
            note=f"best hand chunk {best_chunk}: {best:.3g} s (of {chunks[0]}..{chunks[-1]})"),
        Row("engine", case, "naive / gdlab", seconds["naive"] / gdlab, target=">= 1.6",
            note=f"DataLoader batch {NAIVE_BATCH}: {seconds['naive']:.3g} s"),
        Row("engine", f"mlp784 N={n_big:.0e} vs {n_small:.0e}", "peak memory beyond data",
            big["beyond_data_mib"] / small["beyond_data_mib"], target="<= 1.2",
            note=f"peak RSS - RSS after data: {big['beyond_data_mib']:.0f} vs {small['beyond_data_mib']:.0f} MiB "
                 f"(data {big['data_mib']:.0f} vs {small['data_mib']:.0f} MiB), chunk {big['chunk_size']}, "
                 f"glibc mmap threshold 1 MiB"
                 + (f"; default allocator: {default_allocator[n_big]['beyond_data_mib']:.0f} vs "
                    f"{default_allocator[n_small]['beyond_data_mib']:.0f} MiB" if default_allocator else "")),
        Row("engine", case, "bf16 autocast / float32", seconds["gdlab bf16"] / gdlab,
            note=f"gdlab with autocast bfloat16: {seconds['gdlab bf16']:.3g} s, chunk {bf16_choice.size}"),
        Row("engine", case, "float64 accumulation / float32", seconds["gdlab acc64"] / gdlab,
            note=f"float32 chunks summed in float64: {seconds['gdlab acc64']:.3g} s"),
        Row("engine", case, "chunk calibration cost", choice.seconds, unit="s",
            note=f"{gradient_equivalents:.2g} gradient evaluations; chose {choice.size} of "
                 f"{sorted(choice.timings) or '-'}" + (f"; {choice.reason}" if choice.reason else "")),
    ]
    meta = {
        "size": size, "quick": quick, "repeats": repeats, "warmup": warmup, "n": n, "model": "mlp:784-512-512-10:relu",
        "loss": "cross_entropy", "dtype": "float32", "seconds": seconds, "best_hand_chunk": best_chunk,
        "chunk": {"size": choice.size, "source": choice.source, "seconds": choice.seconds, "reason": choice.reason,
                  "seconds_per_row": {str(k): v for k, v in choice.timings.items()}},
        "bf16_chunk": {"size": bf16_choice.size, "source": bf16_choice.source, "seconds": bf16_choice.seconds,
                       "seconds_per_row": {str(k): v for k, v in bf16_choice.timings.items()}},
        "memory_calibration": warm, "memory_budget_mb": budget_mb, "memory": memory,
        "memory_default_allocator": default_allocator,
        "memory_measure": "ru_maxrss after one gradient minus the RSS (/proc/self/statm) after building the data; "
                          "MALLOC_MMAP_THRESHOLD_=1048576 (memory_default_allocator: without it)",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
    }
    return report("engine", rows, meta=meta, out_dir=out_dir)


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    # Internal: the memory measurement's subprocess.
    parser.add_argument("--memory-child", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--calibration-child", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes, one round: checks the script, measures nothing")
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.budget_mb)))
        return
    if args.calibration_child:
        print(json.dumps(calibration_child(args.calibration_child, args.budget_mb)))
        return
    # Calibrate into a fresh cache: the cost row must not read an earlier run's result, and the
    # user's ~/.cache is left alone. The memory subprocesses inherit the directory.
    with tempfile.TemporaryDirectory(prefix="gdlab-bench-cache-") as cache:
        os.environ[calibrate.CACHE_ENV] = cache
        size = "smoke" if args.smoke else "quick" if args.quick else "full"
        path = run(size, args.repeats, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

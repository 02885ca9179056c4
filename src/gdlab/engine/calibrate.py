"""Chunk size tuned to the machine: a short timing of candidate chunk sizes, cached.

The full-batch gradient costs the same arithmetic for every chunk size, but not the same time: small chunks
pay a fixed cost per forward/backward pass (kernel launches, autograd bookkeeping, the gradient accumulation),
large ones leave the CPU caches and make the allocator map fresh pages every pass. Which size is fastest
depends on the model, the machine and the thread count, so :func:`choose_chunk_size` times the candidates
(powers of two from 256 up to the memory cap and N/8) on consecutive rows of the data and keeps the fastest
per row, up to measurement noise: candidates within ``NEAR_BEST`` (3%) of the fastest cannot be told apart by
a one-second timing, so the middle one in size is taken (the lower of two), furthest from both edges of the
flat region, where per-pass overhead (small chunks) or memory traffic (large chunks) takes over.

Cost: one round over the candidates, then more rounds while they stay within ``budget_s`` (about 1 s), never
more than 2N rows in all (two gradient evaluations). Timings taken while other processes compete for the CPU
favour large chunks (OpenMP threads waiting on each other cost a fixed time per pass); such a calibration is
used but not cached on disk. Calibration is skipped (the memory cap, or one chunk of N rows, is used as
before) when N is below ``MIN_CALIBRATION_ROWS``, when fewer than two candidates fit, or when the model has
BatchNorm (its objective depends on the chunk size in training mode, so the size must not depend on timing).

The result is cached in process and on disk, in ``$GDLAB_CACHE_DIR/chunk_sizes.json`` (default
``~/.cache/gdlab/``), keyed by the model's architecture, the per-row input shape, dtype, device,
torch threads, autocast dtype and the largest candidate. A cache file that cannot be read or
parsed is ignored and rewritten; one that cannot be written is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gdlab.optim.losses import LossFn

MIN_CANDIDATE = 256
MIN_CALIBRATION_ROWS = 8192
BUDGET_S = 1.0
MAX_ROUNDS = 3
NEAR_BEST = 0.03
BUSY_CPU_SHARE = 0.75
CACHE_ENV = "GDLAB_CACHE_DIR"
CACHE_FILE = "chunk_sizes.json"
DEFAULT_MEMORY_BUDGET_MB = 256.0

_memory_cache: dict[str, int] = {}


@dataclass(frozen=True)
class ChunkChoice:
    """The chunk size (rows per forward/backward pass) a full-batch evaluation uses, and why.

    ``source``: ``given`` (set by the caller), ``memory`` (the memory cap or N, calibration not
    applicable: ``reason`` says why), ``calibrated`` (timed now), ``cache`` (timed earlier, read
    from the cache), ``checkpoint`` (the size a resumed run was using), ``loader`` (a
    DataLoader's batch size: its batches are the chunks). ``seconds``: time spent
    choosing. ``timings``: seconds per row of each candidate, when timed now.
    """

    size: int
    source: str
    seconds: float = 0.0
    reason: str = ""
    timings: dict[int, float] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        """Whether the size was chosen by timing (now or on an earlier run)."""
        return self.source in ("calibrated", "cache")


def candidate_chunk_sizes(max_chunk: int) -> list[int]:
    """Powers of two from ``MIN_CANDIDATE`` up to ``max_chunk`` rows (empty below the minimum)."""
    sizes, size = [], MIN_CANDIDATE
    while size <= max_chunk:
        sizes.append(size)
        size *= 2
    return sizes


def cache_dir() -> Path:
    """Where calibrations are kept: ``$GDLAB_CACHE_DIR``, else ``~/.cache/gdlab``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "gdlab"


@functools.lru_cache(maxsize=None)
def _processor_name(device: str) -> str:
    """The GPU's or CPU's model name: a cache written on one machine must not steer another."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def architecture_signature(model: nn.Module) -> str:
    """First 16 hex digits of a hash of the module tree and every parameter's name, shape, dtype."""
    parts = [repr(model)]
    parts += [f"{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}" for name, p in model.named_parameters()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_key(model: nn.Module, X: torch.Tensor, autocast: torch.dtype | None, max_candidate: int) -> str:
    """The calibration's cache key: architecture, per-row input shape, dtype, device (and its
    model name), torch threads and version, autocast dtype, largest candidate."""
    device = str(X.device)
    return json.dumps({
        "arch": architecture_signature(model), "row": list(X.shape[1:]), "dtype": str(X.dtype),
        "device": device, "processor": _processor_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "autocast": str(autocast), "max_candidate": max_candidate,
    }, sort_keys=True)


def clear_memory_cache() -> None:
    """Forget the calibrations made in this process (the disk cache is left as it is)."""
    _memory_cache.clear()


def _read_disk_cache(path: Path) -> dict[str, int]:
    """The cache file's entries; an unreadable or malformed file reads as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


def _write_disk_cache(path: Path, key: str, size: int) -> None:
    """Add ``key: size`` to the cache file, atomically; a failure only loses the cache entry."""
    entries = _read_disk_cache(path)
    entries[key] = size
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entries, handle, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _cpu_clock() -> float:
    """CPU seconds used by this process, all threads together."""
    return time.process_time()


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timing covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Run timing passes that leave the model as they found it: gradients, buffers (running
    statistics) and the global RNG (Dropout) are restored afterwards. Yields the trainable params."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    gpus = sorted({p.device.index or 0 for p in params if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=gpus):
            yield params
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


def time_candidates(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
                    candidates: list[int], *, autocast: torch.dtype | None = None,
                    budget_s: float = BUDGET_S, max_rows: int | None = None) -> dict[int, float]:
    """Seconds per row of a forward+backward pass at each chunk size in ``candidates``.

    Rows are taken consecutively from ``X`` (N, ...) and ``y``, wrapping around, so the data stream from
    memory as in a real evaluation. Each round times every candidate on about the same number of rows (one
    untimed pass, then at least two timed ones); rounds repeat, up to ``MAX_ROUNDS``, while the total stays
    under ``budget_s`` seconds and ``max_rows`` rows (default 2N). The fastest round of each candidate is
    kept, which discounts interference from other processes.
    """
    n = int(X.shape[0])
    max_rows = 2 * n if max_rows is None else max_rows
    device = X.device
    offset = 0

    def cast() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if autocast is None else torch.autocast(device_type=device.type, dtype=autocast)

    def run_chunks(size: int, count: int) -> float:
        nonlocal offset
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            if offset + size > n:
                offset = 0
            with cast():
                loss = loss_fn(model(X[offset:offset + size]), y[offset:offset + size]) * (size / n)
            loss.backward()
            offset += size
        _synchronize(device)
        return time.perf_counter() - start

    best: dict[int, float] = {}
    with _untouched(model) as params:
        for p in params:
            p.grad = None
        started = time.perf_counter()
        run_chunks(candidates[0], 1)  # first pass: allocation and lazy initialisation
        row_s = max(run_chunks(candidates[0], 1), 1e-9) / candidates[0]
        round_rows = min(max_rows / MAX_ROUNDS, budget_s / MAX_ROUNDS / row_s)
        trial_rows = round_rows / len(candidates)
        # A real evaluation is back-to-back passes of one size: each trial first runs one
        # untimed pass (the change of size costs the allocator fresh pages), then times two or more.
        counts = {c: max(2, int(trial_rows // c)) for c in candidates}
        rows_per_round = sum(c * (k + 1) for c, k in counts.items())
        used = 2 * candidates[0]
        for round_ in range(MAX_ROUNDS):
            over_time = time.perf_counter() - started >= budget_s
            if round_ > 0 and (over_time or used + rows_per_round > max_rows):
                break
            for size in candidates:
                run_chunks(size, 1)
                per_row = run_chunks(size, counts[size]) / (size * counts[size])
                best[size] = min(best.get(size, math.inf), per_row)
            used += rows_per_round
    return best


def pick_chunk_size(timings: dict[int, float], near_best: float = NEAR_BEST) -> int:
    """The chunk size to use given seconds per row of each candidate: among the sizes within
    ``near_best`` (relative) of the fastest, the middle one (the smaller of the two middle ones)."""
    fastest = min(timings.values())
    near = sorted(size for size, t in timings.items() if t <= fastest * (1 + near_best))
    return near[(len(near) - 1) // 2]


def batch_dependent(model: nn.Module) -> bool:
    """Whether the model has BatchNorm, whose training-mode objective depends on the chunk size."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def choose_chunk_size(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *,
                      max_chunk: int, autocast: torch.dtype | None = None, calibrate: bool = True,
                      use_cache: bool = True, budget_s: float = BUDGET_S,
                      busy_share: float = BUSY_CPU_SHARE) -> ChunkChoice:
    """The fastest chunk size (rows) for a full-batch gradient over ``X`` (N, ...), at most
    ``max_chunk`` (the memory cap), by timing or from the cache; see the module docstring.

    Without calibration (``calibrate=False``, small N, BatchNorm) the size is
    ``min(max_chunk, N)``: one chunk holding every row when they fit. On CPU, a timing during
    which this process got less than ``busy_share`` of its threads' CPU time (other processes
    competed for the cores) is used in this process but not written to the disk cache.
    """
    n = int(X.shape[0])
    fallback = max(1, min(max_chunk, n))
    # Candidates up to N/8 keep the first round's compulsory three passes each within N rows.
    candidates = candidate_chunk_sizes(min(max_chunk, n // 8))
    reason = ""
    if not calibrate:
        reason = "calibration off"
    elif n < MIN_CALIBRATION_ROWS:
        reason = f"N = {n} < {MIN_CALIBRATION_ROWS} rows"
    elif len(candidates) < 2:
        reason = f"memory cap of {max_chunk} rows leaves fewer than 2 candidates"
    elif batch_dependent(model):
        reason = "BatchNorm: the chunk size changes the training-mode objective"
    if reason:
        return ChunkChoice(fallback, "memory", reason=reason)

    start = time.perf_counter()
    key = cache_key(model, X, autocast, candidates[-1])
    path = cache_dir() / CACHE_FILE
    if use_cache:
        cached = _memory_cache[key] if key in _memory_cache else _read_disk_cache(path).get(key)
        if cached in candidates:
            _memory_cache[key] = cached
            return ChunkChoice(cached, "cache", seconds=time.perf_counter() - start)
    cpu_start = _cpu_clock()
    timings = time_candidates(model, loss_fn, X, y, candidates, autocast=autocast, budget_s=budget_s)
    seconds = time.perf_counter() - start
    share = (_cpu_clock() - cpu_start) / (seconds * torch.get_num_threads())
    size = pick_chunk_size(timings)
    busy = X.device.type == "cpu" and share < busy_share
    if busy:
        reason = (f"the CPU was busy during calibration (this process got {share:.0%} of "
                  f"{torch.get_num_threads()} threads' time): not cached on disk")
    if use_cache:
        _memory_cache[key] = size
        if not busy:
            _write_disk_cache(path, key, size)
    return ChunkChoice(size, "calibrated", seconds=seconds, reason=reason, timings=timings)


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def estimate_bytes_per_sample(model: nn.Module, X: torch.Tensor, probe: int = 16) -> int:
    """Estimate the activation memory (bytes) one sample costs in a forward+backward pass. Runs one no-grad
    forward on ``min(probe, N)`` rows and sums the outputs of every leaf module; autograd keeps roughly the
    activations plus their gradients, hence the factor 3."""
    n = max(1, min(probe, X.shape[0]))
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        total += _tensor_bytes(output)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the probe must not move BatchNorm running statistics
    try:
        with torch.no_grad():
            model(X[:n])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    input_bytes = X[:1].numel() * X.element_size()
    return max(1, (3 * total) // n + input_bytes)


def auto_chunk_size(model: nn.Module, X: torch.Tensor, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                    bytes_per_sample: int | None = None) -> int:
    """Largest chunk (rows) whose estimated activation memory fits in ``memory_budget_mb`` MiB,
    clamped to [1, N]. ``bytes_per_sample``: a known estimate (else measured by a probe)."""
    per_sample = bytes_per_sample or estimate_bytes_per_sample(model, X)
    chunk = int(memory_budget_mb * 2**20) // per_sample
    return int(min(max(chunk, 1), X.shape[0]))


# The probe is a forward pass with hooks, too slow to repeat on every default-chunk call.
_bytes_per_sample: dict[tuple[str, ...], int] = {}


def _cached_bytes_per_sample(model: nn.Module, X: torch.Tensor) -> int:
    """:func:`estimate_bytes_per_sample`, once per architecture, row shape, dtype and device."""
    key = (architecture_signature(model), str(tuple(X.shape[1:])), str(X.dtype), str(X.device))
    if key not in _bytes_per_sample:
        _bytes_per_sample[key] = estimate_bytes_per_sample(model, X)
    return _bytes_per_sample[key]


def chunk_choice(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *,
                 chunk_size: int | None = None, memory_budget_mb: float | None = None,
                 autocast: torch.dtype | None = None, calibrate: bool = True) -> ChunkChoice:
    """The chunk size (rows per pass) for a full-batch gradient over ``X`` (N, ...): ``chunk_size``
    when given, else the fastest power of two within the memory cap of :func:`auto_chunk_size`
    (calibrated and cached by :func:`choose_chunk_size`), or one chunk of N rows when N is small."""
    if chunk_size is not None:
        return ChunkChoice(int(chunk_size), "given")
    if X.shape[0] == 0:
        return ChunkChoice(1, "memory", reason="no rows")
    cap = auto_chunk_size(model, X, memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB,
                          bytes_per_sample=_cached_bytes_per_sample(model, X))
    return choose_chunk_size(model, loss_fn, X, y, max_chunk=cap, autocast=autocast, calibrate=calibrate)

"""Run a study: every (task, optimizer) pair tuned with the same budget, then re-run over seeds.

Each pair is one job: a learning-rate search (phase ``tune``, ``trials`` runs at the tuning seed), then the
best learning rate re-run once per study seed (phase ``final``). Jobs run in parallel worker processes; every
finished run is committed to the SQLite store at once under a deterministic key, so a study that is stopped or
killed and started again skips what is stored and finishes the rest, each run stored exactly once.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdlab.errors import WorkerDiedError
from gdlab.store import RunStore, StoredRun
from gdlab.study.spec import OptimizerEntry, StudySpec, TaskEntry, check_study_runs
from gdlab.tune import search_learning_rate

_COST_ORDER = {"stochastic": 0, "minibatch": 1, "full": 2}


@dataclass
class PairOutcome:
    """What one (task, optimizer) job did."""

    task: str
    optimizer: str
    best_lr: float | None
    ran: int = 0
    skipped: int = 0
    trials: list[tuple[int, float, float | None]] = field(default_factory=list)


def expected_runs(spec: StudySpec) -> int:
    """How many runs a complete study stores (tuning trials plus final seeds per pair)."""
    per_pair = [(spec.trials if opt.searched else 0) + len(spec.seeds) for opt in spec.optimizers]
    return len(spec.tasks) * sum(per_pair)


def _objective(status: str | None, train_loss: float | None) -> float | None:
    if status == "diverged" or train_loss is None or not math.isfinite(train_loss):
        return None
    return float(train_loss)


def run_pair(spec: StudySpec, task_index: int, opt_index: int, store_path: str, threads: int | None = None, *,
             seeds: Sequence[int] | None = None, lr: float | None = None) -> PairOutcome:
    """Tune and re-run one (task, optimizer) pair, storing each run as it finishes (skipping
    runs already stored). Runs in a worker process or in the caller's. ``seeds`` (default: the
    study's) are the final runs it makes; with ``lr`` the search is skipped and they use it."""
    import torch

    from gdlab.run import run
    from gdlab.sweep import run_sweep

    if threads:
        torch.set_num_threads(threads)
    task: TaskEntry = spec.tasks[task_index]
    opt: OptimizerEntry = spec.optimizers[opt_index]
    outcome = PairOutcome(task.name, opt.name, None)
    with RunStore(store_path) as store:

        def lookup(key: str) -> list[tuple[Any, ...]]:
            """The stored (status, train_loss) of the run, as one row; none if it is not stored."""
            _, rows = store.query("SELECT status, train_loss FROM runs WHERE run_key = ?", (key,))
            if rows:
                outcome.skipped += 1
            return rows

        def keep(key: str, phase: str, trial: int | None, lr: float, seed: int, result: Any) -> float | None:
            record = result.to_record()
            if store.add_run(StoredRun(key, spec.name, task.name, opt.name, phase, trial, seed, float(lr),
                                       dict(opt.params), record)):
                outcome.ran += 1
            return _objective(record["final"]["status"], record["final"]["train_loss"])

        def execute(phase: str, trial: int | None, lr: float, seed: int) -> float | None:
            key = spec.run_key(task, opt, phase, trial, lr, seed)
            rows = lookup(key)
            if rows:
                return _objective(*rows[0])
            return keep(key, phase, trial, lr, seed, run(spec.run_config(task, opt, lr, seed)))

        def execute_many(trials: list[tuple[int, float]]) -> list[float | None]:
            """Tuning trials as one sweep (stacked when the model allows and it is faster)."""
            values: dict[int, float | None] = {}
            missing = []
            for number, lr in trials:
                key = spec.run_key(task, opt, "tune", number, lr, spec.tuning_seed)
                rows = lookup(key)
                if rows:
                    values[number] = _objective(*rows[0])
                else:
                    missing.append((number, lr, key))

            def stored(i: int, result: Any) -> None:
                number, lr, key = missing[i]
                values[number] = keep(key, "tune", number, lr, spec.tuning_seed, result)

            configs = [spec.run_config(task, opt, lr, spec.tuning_seed) for _, lr, _ in missing]
            run_sweep(configs, on_result=stored)
            return [values[number] for number, _ in trials]

        if lr is not None:
            outcome.best_lr = lr
        elif opt.searched:
            search = search_learning_rate(spec.sampler, spec.trials, opt.lr_low, opt.lr_high,
                                          lambda number, lr: execute("tune", number, lr, spec.tuning_seed),
                                          seed=spec.tuning_seed, evaluate_many=execute_many)
            outcome.trials, outcome.best_lr = search.trials, search.best_lr
        else:
            outcome.best_lr = opt.lr_low
        if outcome.best_lr is not None:
            for seed in spec.seeds if seeds is None else seeds:
                execute("final", None, outcome.best_lr, seed)
    return outcome


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_study(spec: StudySpec, store_path: str | Path, *, workers: int | None = None,
              on_progress: Callable[[int, int], None] | None = None, check: bool = False,
              on_start: Callable[[], None] | None = None) -> list[PairOutcome]:
    """Run every pair of ``spec`` (``workers`` processes, default the study's) into the store.
    With ``check``, :func:`gdlab.study.spec.check_study_runs` first (in the worker processes, which
    it warms up: imports, data), before anything is written; then ``on_start()``.
    ``on_progress(stored, total)`` is called about twice a second with the number of this study's runs in the
    store. A worker that dies (e.g. killed) ends the study with WorkerDiedError; finished runs stay stored,
    and running the same study again resumes it."""
    store_path = str(store_path)
    workers = workers or spec.workers
    total = expected_runs(spec)
    pairs = sorted(((t, o) for t in range(len(spec.tasks)) for o in range(len(spec.optimizers))),
                   key=lambda p: (_COST_ORDER.get(spec.optimizers[p[1]].regime, 3), p))

    def stored_count() -> int:
        with RunStore(store_path) as store:
            return len(store.run_keys(spec.name))

    def start(map_tasks: Callable[..., Any] = map) -> None:
        if check:
            check_study_runs(spec, map_tasks)
        with RunStore(store_path) as store:
            store.save_study(spec.name, spec.to_dict())
        if on_start:
            on_start()

    if workers <= 1:
        start()
        outcomes = []
        for t, o in pairs:
            outcomes.append(run_pair(spec, t, o, store_path))
            if on_progress:
                on_progress(stored_count(), total)
        return outcomes

    # Jobs: each pair's search, then each of its final runs as a job of its own, the most costly
    # regime first, so that the workers stay busy to the end (seed -1: the search).
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[int, int], PairOutcome] = {}
    ready = [(_COST_ORDER.get(spec.optimizers[o].regime, 3), t, o, -1) for t, o in pairs]
    heapq.heapify(ready)
    pending: dict[cf.Future, tuple[int, int, int, int]] = {}
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_use_threads,
                                initargs=(threads,)) as pool:  # each worker's torch threads, once
        try:
            start(pool.map)
            while ready or pending:
                while ready and len(pending) < workers:
                    cost, t, o, seed = heapq.heappop(ready)
                    options = {"seeds": ()} if seed < 0 else {"seeds": (seed,), "lr": results[(t, o)].best_lr}
                    pending[pool.submit(run_pair, spec, t, o, store_path, **options)] = (cost, t, o, seed)
                done, _ = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    cost, t, o, seed = pending.pop(fut)
                    outcome = fut.result()
                    if seed < 0:
                        results[(t, o)] = outcome
                        for s in spec.seeds if outcome.best_lr is not None else ():
                            heapq.heappush(ready, (cost, t, o, s))
                    else:
                        results[(t, o)].ran += outcome.ran
                        results[(t, o)].skipped += outcome.skipped
                if on_progress:
                    on_progress(stored_count(), total)
        except cf.process.BrokenProcessPool:
            raise WorkerDiedError("a study worker process died (killed or out of memory); finished runs are "
                                  "stored: run the same command again to resume") from None
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
    return [results[p] for p in pairs]

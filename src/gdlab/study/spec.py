"""Study files: tasks x optimizers x learning-rate search x seeds, validated at the boundary.

A study file is YAML (or JSON)::

    name: default                  # letters, digits, - and _
    workers: 2                     # parallel worker processes
    seeds: [0, 1, 2]               # the best setting of each (task, optimizer) is re-run per seed
    tuning: {sampler: grid, trials: 6, seed: 0}   # the same search budget for every optimizer
    tasks:
      - name: digits-mlp           # label used in the store and the report
        task: digits               # a registered task (or data: FILE.npz)
        model: mlp:64-128-10:relu  # optional: any run option the study does not set itself
        budget: {epochs: 20}       # per run: epochs and/or time_s (and optionally steps)
        target: {train_loss: 0.1}  # exactly one of train_loss, test_loss, test_accuracy
    optimizers:
      - name: sgd                  # label
        optimizer: gd              # an update rule of the registry
        regime: stochastic         # full | minibatch | stochastic
        batch_size: null           # for minibatch
        lr: {low: 1.0e-4, high: 1.0}   # log-uniform search range (or a number: no search)
        params: {}                 # fixed hyper-parameters of the rule

Every mistake raises GdlabError naming the field (``tasks[2].budget.epochs``) and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gdlab.config import RunConfig, load_config_file
from gdlab.errors import GdlabError, did_you_mean

SAMPLERS = ("grid", "random", "tpe")
TARGET_METRICS = ("train_loss", "test_loss", "test_accuracy")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# The run options a study sets itself: from the optimizer entry, the budget and the seeds, or the
# same for every run for fairness (run_config). A task entry may set any other RunConfig field.
STUDY_SET_FIELDS = ("optimizer", "lr", "optimizer_params", "regime", "batch_size", "seed", "data_seed",
                    "max_epochs", "time_budget_s", "steps", "nonfinite_policy", "divergence_factor", "eval_every")
TASK_RUN_FIELDS = tuple(f for f in RunConfig.model_fields if f not in STUDY_SET_FIELDS)
_TASK_KEYS = ("name", *TASK_RUN_FIELDS, "budget", "target")
_OPT_KEYS = ("name", "optimizer", "regime", "batch_size", "lr", "params")
_TOP_KEYS = ("name", "description", "workers", "seeds", "tuning", "tasks", "optimizers", "store", "report")


@dataclass(frozen=True)
class Budget:
    """What one run may spend: epochs (gradient evaluations / N), seconds, steps (None = no limit)."""

    epochs: float | None = None
    time_s: float | None = None
    steps: int | None = None


@dataclass(frozen=True)
class TaskEntry:
    """One task of a study: the data/model/loss fields of a run config, a budget and a target."""

    name: str
    run_fields: dict[str, Any]
    budget: Budget
    target_metric: str
    target_value: float


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer of a study: rule, regime, fixed hyper-parameters and the lr search range."""

    name: str
    optimizer: str
    regime: str
    batch_size: int | None
    lr_low: float
    lr_high: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def searched(self) -> bool:
        return self.lr_low < self.lr_high


@dataclass(frozen=True)
class StudySpec:
    """A validated study."""

    name: str
    description: str
    workers: int
    seeds: tuple[int, ...]
    sampler: str
    trials: int
    tuning_seed: int
    tasks: tuple[TaskEntry, ...]
    optimizers: tuple[OptimizerEntry, ...]
    store: str | None = None
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_config(self, task: TaskEntry, opt: OptimizerEntry, lr: float, seed: int) -> RunConfig:
        """The validated RunConfig of one run of this study."""
        # the data (and its split) stay fixed across a study's seeds, which vary the
        # initialisation and the sample order: differences between runs are the optimizer's
        fields = dict(task.run_fields)
        fields.update(
            optimizer=opt.optimizer, lr=lr, optimizer_params=dict(opt.params), regime=opt.regime,
            batch_size=opt.batch_size, seed=seed, data_seed=self.tuning_seed, max_epochs=task.budget.epochs,
            time_budget_s=task.budget.time_s, steps=task.budget.steps,
            # a diverged trial must fail, not be rescued by a smaller lr than the one under test
            nonfinite_policy="stop", divergence_factor=1e4, eval_every=None,
        )
        return RunConfig.from_dict(fields)

    def run_key(self, task: TaskEntry, opt: OptimizerEntry, phase: str, trial: int | None,
                lr: float, seed: int) -> str:
        """Deterministic id of one run: the same study, entries, phase, trial, lr and seed give
        the same key, so a re-run study skips what is stored."""
        payload = {"study": self.name, "task": asdict(task), "optimizer": asdict(opt), "phase": phase,
                   "trial": trial, "lr": float(lr), "seed": int(seed), "sampler": self.sampler,
                   "trials": self.trials, "tuning_seed": self.tuning_seed}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file (GdlabError on any mistake, naming the field)."""
    return parse_study(load_config_file(path), source=str(path))


def _where(source: str, path: str) -> str:
    return f"study '{source}': {path}"


def _check_keys(data: dict, allowed: tuple[str, ...], source: str, path: str, valid: str | None = None) -> None:
    for key in data:
        if key not in allowed:
            raise GdlabError(f"{_where(source, path)}: unknown field '{key}'"
                             f"{did_you_mean(str(key), allowed)}; valid fields: {valid or ', '.join(allowed)}")


def _number(value: Any, source: str, path: str, *, positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GdlabError(f"{_where(source, path)} must be a finite number, got {value!r}")
    if integer and float(value) != int(value):
        raise GdlabError(f"{_where(source, path)} must be an integer, got {value!r}")
    if positive and value <= 0:
        raise GdlabError(f"{_where(source, path)} must be > 0, got {value!r}")
    return int(value) if integer else float(value)


def _label(value: Any, source: str, path: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise GdlabError(f"{_where(source, path)} must be a name of letters, digits, '.', '-' or '_', "
                         f"got {value!r}")
    return value


def _parse_task(i: int, raw: Any, source: str) -> TaskEntry:
    path = f"tasks[{i}]"
    if not isinstance(raw, dict):
        raise GdlabError(f"{_where(source, path)} must be a mapping with name, task, budget and target")
    for key in raw:
        if key in STUDY_SET_FIELDS:
            raise GdlabError(f"{_where(source, path)}: '{key}' is set by the study for every run (from the "
                             "optimizer entry, the budget or the seeds); drop it from the task")
    _check_keys(raw, _TASK_KEYS, source, path,
                "name, budget, target and the run options of docs/cli.md that the study does not set")
    if "task" not in raw and "data" not in raw:
        raise GdlabError(f"{_where(source, path)} needs 'task' (a registered task) or 'data' (an .npz file)")
    name = _label(raw.get("name", raw.get("task")), source, f"{path}.name")
    budget_raw = raw.get("budget")
    if not isinstance(budget_raw, dict) or not budget_raw:
        raise GdlabError(f"{_where(source, path)}.budget must be a mapping such as {{epochs: 20}} "
                         "or {time_s: 30}")
    _check_keys(budget_raw, ("epochs", "time_s", "steps"), source, f"{path}.budget")
    budget = Budget(**{
        key: None if budget_raw.get(key) is None
        else _number(budget_raw[key], source, f"{path}.budget.{key}", positive=True, integer=key == "steps")
        for key in ("epochs", "time_s", "steps")
    })
    if budget.epochs is None and budget.time_s is None and budget.steps is None:
        raise GdlabError(f"{_where(source, path)}.budget needs epochs, time_s or steps")
    target_raw = raw.get("target")
    if not isinstance(target_raw, dict) or len(target_raw) != 1:
        raise GdlabError(f"{_where(source, path)}.target must hold exactly one of "
                         f"{', '.join(TARGET_METRICS)}, e.g. {{train_loss: 0.1}}")
    (metric, value), = target_raw.items()
    if metric not in TARGET_METRICS:
        raise GdlabError(f"{_where(source, path)}.target: unknown metric '{metric}'"
                         f"{did_you_mean(str(metric), TARGET_METRICS)}; "
                         f"use one of {', '.join(TARGET_METRICS)}")
    value = _number(value, source, f"{path}.target.{metric}")
    run_fields = {k: raw[k] for k in _TASK_KEYS
                  if k not in ("name", "budget", "target") and raw.get(k) is not None}
    return TaskEntry(name, run_fields, budget, metric, value)


def _parse_optimizer(i: int, raw: Any, source: str) -> OptimizerEntry:
    path = f"optimizers[{i}]"
    if not isinstance(raw, dict):
        raise GdlabError(f"{_where(source, path)} must be a mapping with name, optimizer, regime and lr")
    _check_keys(raw, _OPT_KEYS, source, path)
    if "optimizer" not in raw:
        raise GdlabError(f"{_where(source, path)} needs 'optimizer' (e.g. gd, momentum, adam)")
    name = _label(raw.get("name", raw["optimizer"]), source, f"{path}.name")
    lr = raw.get("lr")
    if isinstance(lr, dict):
        _check_keys(lr, ("low", "high"), source, f"{path}.lr")
        if "low" not in lr or "high" not in lr:
            raise GdlabError(f"{_where(source, path)}.lr needs low and high, e.g. {{low: 1.0e-3, high: 1.0}}")
        low = _number(lr["low"], source, f"{path}.lr.low", positive=True)
        high = _number(lr["high"], source, f"{path}.lr.high", positive=True)
        if not low < high:
            raise GdlabError(f"{_where(source, path)}.lr: the search space is empty (low {low:g} >= "
                             f"high {high:g}); give low < high, or a single number for a fixed lr")
    elif lr is not None:
        low = high = _number(lr, source, f"{path}.lr", positive=True)
    else:
        raise GdlabError(f"{_where(source, path)} needs 'lr': a range {{low, high}} or a number")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise GdlabError(f"{_where(source, path)}.params must be a mapping such as {{momentum: 0.9}}")
    batch = raw.get("batch_size")
    if batch is not None:
        batch = int(_number(batch, source, f"{path}.batch_size", positive=True, integer=True))
    regime = raw.get("regime", "full")
    if not isinstance(regime, str):
        raise GdlabError(f"{_where(source, path)}.regime must be full, minibatch or stochastic")
    return OptimizerEntry(name, str(raw["optimizer"]), regime, batch, low, high, dict(params))


def parse_study(data: dict[str, Any], source: str = "<study>") -> StudySpec:
    """Validate a study mapping (see the module docstring for the format)."""
    if not isinstance(data, dict):
        raise GdlabError(f"study '{source}' must be a mapping at the top level")
    _check_keys(data, _TOP_KEYS, source, "top level")
    name = _label(data.get("name"), source, "name")
    workers = int(_number(data.get("workers", 1), source, "workers", positive=True, integer=True))
    seeds_raw = data.get("seeds", [0])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise GdlabError(f"{_where(source, 'seeds')} must be a non-empty list of integers, e.g. [0, 1, 2]")
    seeds = tuple(int(_number(s, source, f"seeds[{i}]", integer=True)) for i, s in enumerate(seeds_raw))
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise GdlabError(f"{_where(source, 'seeds')} must be distinct integers >= 0, got {list(seeds)}")
    tuning = data.get("tuning") or {}
    if not isinstance(tuning, dict):
        raise GdlabError(f"{_where(source, 'tuning')} must be a mapping such as {{sampler: grid, trials: 6}}")
    _check_keys(tuning, ("sampler", "trials", "seed"), source, "tuning")
    sampler = tuning.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise GdlabError(f"{_where(source, 'tuning.sampler')}: unknown sampler '{sampler}'"
                         f"{did_you_mean(str(sampler), SAMPLERS)}; use one of {', '.join(SAMPLERS)}")
    trials = int(_number(tuning.get("trials", 8), source, "tuning.trials", positive=True, integer=True))
    tuning_seed = int(_number(tuning.get("seed", 0), source, "tuning.seed", integer=True))
    for key in ("tasks", "optimizers"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise GdlabError(f"{_where(source, key)} must be a non-empty list")
    tasks = tuple(_parse_task(i, t, source) for i, t in enumerate(data["tasks"]))
    optimizers = tuple(_parse_optimizer(i, o, source) for i, o in enumerate(data["optimizers"]))
    for kind, entries in (("tasks", tasks), ("optimizers", optimizers)):
        names = [e.name for e in entries]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise GdlabError(f"{_where(source, kind)}: the name '{dup}' is used twice; "
                             "give each entry its own name")
    for opt_key in ("store", "report", "description"):
        if data.get(opt_key) is not None and not isinstance(data[opt_key], str):
            raise GdlabError(f"{_where(source, opt_key)} must be a string")
    return StudySpec(name=name, description=data.get("description") or "", workers=workers, seeds=seeds,
                     sampler=sampler, trials=trials, tuning_seed=tuning_seed, tasks=tasks,
                     optimizers=optimizers, store=data.get("store"), report=data.get("report"))


def check_task(spec: StudySpec, task_index: int) -> None:
    """Check task ``task_index`` with every optimizer without training: the task is prepared once
    (data, model, loss), each optimizer's rule, hyper-parameters and regime are checked against its
    size. A GdlabError names the pair."""
    from gdlab.engine.regimes import make_schedule
    from gdlab.optim import validate_hyperparameters
    from gdlab.run import prepare

    task, first = spec.tasks[task_index], spec.optimizers[0]
    try:
        n_train = prepare(spec.run_config(task, first, first.lr_low, spec.tuning_seed)).data.n_train
    except GdlabError as exc:
        raise GdlabError(f"study '{spec.name}', task '{task.name}': {exc}") from None
    for opt in spec.optimizers:
        try:
            config = spec.run_config(task, opt, opt.lr_low, spec.tuning_seed)
            validate_hyperparameters(opt.optimizer, opt.lr_low, **opt.params)
            make_schedule(config.regime, n_train, batch_size=config.batch_size)
        except GdlabError as exc:
            raise GdlabError(f"study '{spec.name}', task '{task.name}', optimizer '{opt.name}': {exc}") from None


def check_study_runs(spec: StudySpec, map_tasks: Callable[..., Iterable[None]] = map) -> None:
    """Check every (task, optimizer) pair without training (:func:`check_task` for each task,
    mapped over the tasks by ``map_tasks``: a process pool's map checks them in its workers), so
    that an unknown task, model or optimizer, a bad hyper-parameter or a batch larger than the data
    fails before anything is written; the first failing task, in order, raises."""
    list(map_tasks(check_task, [spec] * len(spec.tasks), range(len(spec.tasks))))

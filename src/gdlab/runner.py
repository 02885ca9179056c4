"""Assemble a run from a validated RunConfig, run it, and produce the run record.

This is the one place where task, model, loss, regulariser, update rule, sample schedule,
step-size policy and diagnostics meet; the CLI, the demo and studies all go through :func:`run`.
It sits above both ``engine`` and ``diagnostics`` in the dependency order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import gdlab
from gdlab.checkpoint import rng_state, set_rng_state, write_checkpoint
from gdlab.config import RunConfig
from gdlab.data import Dataset, load_data_source, load_task
from gdlab.data.presets import PRESETS
from gdlab.data.tasks import TASKS
from gdlab.engine.calibrate import ChunkChoice
from gdlab.engine.gradient import LossFn, chunk_choice
from gdlab.diagnostics.health import HealthThresholds
from gdlab.distributed import Shard, all_reduce_sum, broadcast_parameters, make_shard, world_size
from gdlab.diagnostics.tracking import HealthCallback, SharpnessCallback
from gdlab.engine.choose import StepperChoice, choose_stepper, compiled_blocker
from gdlab.engine.functional import FunctionalObjective
from gdlab.engine.gradient import FullBatchObjective
from gdlab.engine.loop import Callback, CheckpointHook, GuardOptions, LoopOutcome, StopRules, train_loop
from gdlab.engine.steppers.compiled import CompiledStepper, StepFunctions, block_length
from gdlab.engine.steppers.eager import EagerStepper
from gdlab.engine.regimes import SampleSchedule, make_schedule
from gdlab.errors import GdlabError, unknown_name
from gdlab.models import build_model
from gdlab.optim import build_optimizer, get_loss, loss_output_dim, regularization_term
from gdlab.optim.functional import functional_rule
from gdlab.optim.schedules import build_scheduler

DTYPES = {"float32": torch.float32, "float64": torch.float64}
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
AUTO_HISTORY_RECORDS = 1000
AUTO_EVALUATIONS = 50


@dataclass
class PreparedRun:
    """Everything a run needs, built and checked, before any training step."""

    config: RunConfig
    device: torch.device
    data: Dataset
    model: nn.Module
    loss_fn: LossFn
    loss_name: str
    model_spec: str
    regularizer: Callable[[], torch.Tensor] | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule: SampleSchedule
    chunk_size: int
    eval_every: int
    log_every: int
    expected_steps: int | None
    shard: Shard | None = None
    restored: bool = False
    chunk: ChunkChoice | None = None


@dataclass
class RunResult:
    """A finished run: the record's parts plus the trained model (not part of the record)."""

    config: dict[str, Any]
    environment: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None

    def to_record(self) -> dict[str, Any]:
        """The run record as plain JSON-able data; non-finite numbers become null with an event."""
        events = list(self.events)
        record = {
            "config": self.config,
            "environment": self.environment,
            "final": _json_safe(self.final, "final", events),
            "history": _json_safe(self.history, "history", events),
            "events": events,
            "diagnostics": _json_safe(self.diagnostics, "diagnostics", events),
        }
        return record


def _json_safe(value: Any, where: str, events: list[dict[str, Any]]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        events.append({"step": None, "kind": "nonfinite_value",
                       "detail": f"{where} was {value}; written as null"})
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{where}.{k}", events) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", events) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item(), where, events)
    return value


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:K``, ``mps`` or ``auto`` (CUDA, else MPS, else CPU) as a
    torch.device; GdlabError when the device asked for is not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GdlabError(f"device '{name}' was requested but no CUDA GPU is available; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise GdlabError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not _mps_available():
        raise GdlabError(
            "device 'mps' was requested but Apple's MPS backend is not available; use --device cpu or auto"
        )
    return torch.device(name)


def precision_name(config: RunConfig) -> str:
    """The precision a run computes in: ``bf16`` (float32 parameters, bf16 autocast) or its dtype."""
    return "bf16" if config.autocast == "bfloat16" else config.dtype


def precision_dtypes(config: RunConfig) -> tuple[torch.dtype | None, torch.dtype | None]:
    """The engine's ``autocast`` and ``accumulate`` dtypes from the config (None: not set)."""
    autocast = AUTOCAST_DTYPES[config.autocast] if config.autocast else None
    accumulate = DTYPES[config.accumulate] if config.accumulate else None
    return autocast, accumulate


def environment_info(config: RunConfig, device: torch.device, chunk: ChunkChoice | None = None) -> dict[str, Any]:
    """Versions, device, threads, seed and config hash: what a run needs to be reproduced; the
    precision, and the chunk size with how it was chosen (``chunk``: given, memory, calibrated,
    cache; ``chunk_calibrated``: chosen by timing on this machine)."""
    chunk_info = {} if chunk is None else {
        "chunk_size": chunk.size, "chunk_source": chunk.source, "chunk_calibrated": chunk.calibrated,
        "chunk_choice_s": chunk.seconds, **({"chunk_note": chunk.reason} if chunk.reason else {}),
    }
    return {
        "gdlab": gdlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "seed": config.seed,
        "config_hash": config.config_hash(),
        "world_size": world_size(),
        "deterministic": config.deterministic,
        "precision": precision_name(config),
        "accumulate": config.accumulate or config.dtype,
        **chunk_info,
    }


def data_source(config: RunConfig) -> str | None:
    """The local data a config names: ``data`` (a file, a directory or a preset name), or a
    preset given as the task (``--task mnist-mlp``); None for a registered in-memory task."""
    if config.data is not None:
        return config.data
    return config.task if config.task in PRESETS else None


def task_defaults(config: RunConfig) -> Any:
    """The TaskSpec or Preset whose default model and loss apply, or None for a plain file."""
    source = data_source(config)
    if source is None:
        return TASKS.get(config.task)
    return PRESETS.get(source)


def load_data(config: RunConfig) -> Dataset:
    """The data set a config names: local data (files, a directory, a preset; every reader
    validates what it returns) or a registered task. Memory-mapped data keeps its storage unless
    its dtype differs from the run's."""
    dtype = DTYPES[config.dtype]
    source = data_source(config)
    if source is not None:
        data = load_data_source(
            source, config.data_dir, seed=config.data_seed_value, test_fraction=config.test_fraction,
            standardize=config.standardize, n_samples=config.n_samples, mmap=config.mmap, dtype=dtype,
        )
        return data.to(dtype=dtype)
    if config.task not in TASKS:
        raise unknown_name("task", config.task, [*TASKS, *PRESETS])
    return load_task(
        config.task, seed=config.data_seed_value, n_samples=config.n_samples,
        test_fraction=config.test_fraction, standardize=config.standardize, dtype=dtype,
    )


def _check_model_io(model: nn.Module, data: Dataset, output_dim: int, spec: str) -> None:
    """Run two rows through the model so shape mismatches fail now, with a clear message."""
    probe = data.X_train[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdlabError(
            f"model '{spec}' cannot take this data's inputs of shape {tuple(data.input_shape)} "
            f"({first}); choose a model whose input size matches the data"
        ) from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != output_dim:
        raise GdlabError(
            f"model '{spec}' produces outputs of shape {tuple(out.shape[1:])} per sample but the "
            f"loss needs {output_dim}; give the model {output_dim} outputs"
        )


def _expected_steps(config: RunConfig, schedule: SampleSchedule) -> int | None:
    candidates = []
    if config.steps is not None:
        candidates.append(config.steps)
    if config.max_epochs is not None:
        candidates.append(math.ceil(config.max_epochs * schedule.steps_per_epoch))
    return min(candidates) if candidates else None


def prepare(config: RunConfig, model: nn.Module | None = None, data: Dataset | None = None) -> PreparedRun:
    """Build data, model, loss, optimizer and schedule from ``config``; every user mistake raises
    GdlabError here, before anything is trained or written. ``model`` overrides ``config.model``;
    ``data`` (an in-memory Dataset, cast to the config's dtype) overrides the task or file the
    config names."""
    config.validate()
    device = resolve_device(config.device)
    data = load_data(config) if data is None else data.to(dtype=DTYPES[config.dtype])
    task = task_defaults(config)
    loss_name = config.loss or (task.default_loss if task else
                                ("cross_entropy" if data.task_type == "classification" else "mse"))
    loss_fn = get_loss(loss_name)
    target_dim = data.y_train.shape[1] if data.task_type == "regression" else None
    output_dim = loss_output_dim(loss_name, data.task_type, data.num_classes, target_dim)
    spec = config.model or (task.default_model if task else "linear")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        built = build_model(
            model if model is not None else spec, data.input_shape, output_dim,
            seed=config.seed, image_shape=data.image_shape, dtype=DTYPES[config.dtype],
        )
    _check_model_io(built, data, output_dim, spec if model is None else type(model).__name__)
    built = built.to(device)
    data = data.to(device)
    shard = make_shard(data.n_train, data.n_test)
    if shard is not None:
        if config.sharpness_every:
            raise GdlabError(
                "sharpness tracking needs the whole training set in one process; drop "
                "--sharpness-every for a multi-process run (or run gdlab sharpness on the saved run)"
            )
        data = replace(
            data,
            X_train=data.X_train[shard.train_start:shard.train_stop],
            y_train=data.y_train[shard.train_start:shard.train_stop],
            X_test=data.X_test[shard.test_start:shard.test_stop],
            y_test=data.y_test[shard.test_start:shard.test_stop],
        )
        broadcast_parameters(built)
    optimizer = build_optimizer(
        config.optimizer, [p for p in built.parameters() if p.requires_grad], config.lr,
        **config.optimizer_params,
    )
    n_train = shard.n_train if shard else data.n_train
    schedule = make_schedule(
        config.regime, n_train, batch_size=config.batch_size, last_batch=config.last_batch,
        seed=config.seed + 1,
    )
    # Calibration times candidate chunk sizes; a deterministic run must not depend on timing.
    chunk_info = chunk_choice(
        built, loss_fn, data.X_train, data.y_train, chunk_size=config.chunk_size,
        memory_budget_mb=config.memory_budget_mb, autocast=precision_dtypes(config)[0],
        calibrate=not config.deterministic,
    )
    chunk = chunk_info.size
    if config.layer_mode == "train" and any(isinstance(m, _BatchNorm) for m in built.modules()):
        rest = schedule.n % schedule.batch_size if schedule.last_batch == "keep" else 0
        smallest = min(chunk, schedule.batch_size, rest or schedule.batch_size)
        if smallest < 2:
            raise GdlabError(
                f"model '{spec}' has BatchNorm, which in layer mode 'train' needs >= 2 rows per "
                f"forward pass but this run would pass {smallest}; use --layer-mode eval or a "
                "larger --batch-size/--chunk-size"
            )
    expected = _expected_steps(config, schedule)
    scheduler = build_scheduler(config.schedule, optimizer, expected)
    eval_every = config.eval_every or max(1, (expected or schedule.steps_per_epoch * AUTO_EVALUATIONS) // AUTO_EVALUATIONS)
    log_every = config.log_every or max(1, (expected or schedule.steps_per_epoch * 10) // AUTO_HISTORY_RECORDS)
    return PreparedRun(
        config=config, device=device, data=data, model=built, loss_fn=loss_fn, loss_name=loss_name,
        model_spec=spec, regularizer=make_regularizer(built, config.l1, config.l2),
        optimizer=optimizer, scheduler=scheduler, schedule=schedule, chunk_size=chunk, eval_every=eval_every,
        log_every=log_every, expected_steps=expected, shard=shard, chunk=chunk_info,
    )


def run(
    config: RunConfig,
    callbacks: Sequence[Callback] = (),
    model: nn.Module | None = None,
    prepared: PreparedRun | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: dict[str, Any] | None = None,
    data: Dataset | None = None,
) -> RunResult:
    """Train as ``config`` says and return the result (record parts plus the trained model).

    ``prepared`` (from :func:`prepare` on the same config) skips building the run again. The same
    config and seed on CPU give the same numbers: data, initialisation and sample order are all
    seeded from ``config.seed``; the global torch RNG is seeded too (Dropout draws from it).
    With ``config.checkpoint_every`` and ``checkpoint_dir`` a checkpoint is written every k steps
    and at the end; ``resume`` (a checkpoint read by :func:`gdlab.checkpoint.read_checkpoint`)
    continues a run exactly where its checkpoint left it. ``data``: an in-memory Dataset to
    train on instead of the task or file the config names.
    """
    if prepared is None:
        prepared = prepare(config, model=model, data=data)
    torch.manual_seed(config.seed)
    if resume is not None and not prepared.restored:
        restore(prepared, resume)
    hook = None
    if config.checkpoint_every and checkpoint_dir is not None:
        hook = CheckpointHook(config.checkpoint_every,
                              lambda state: write_checkpoint(checkpoint_dir, _checkpoint_payload(config, prepared, state)))
    net = prepared.model
    stop = StopRules(
        max_steps=config.steps, max_epochs=config.max_epochs, loss_tol=config.loss_tol,
        grad_tol=config.grad_tol, time_budget_s=config.time_budget_s,
        divergence_factor=config.divergence_factor,
    )
    guard = GuardOptions(
        policy=config.nonfinite_policy, lr_factor=config.rollback_lr_factor,
        max_rollbacks=config.max_rollbacks, clip_norm=config.clip_norm, clip_value=config.clip_value,
    )
    all_callbacks = [*diagnostic_callbacks(config), *callbacks]
    autocast, accumulate = precision_dtypes(config)
    shard = prepared.shard
    objective = FullBatchObjective(
        net, prepared.loss_fn, prepared.data.X_train, prepared.data.y_train, prepared.chunk_size,
        prepared.regularizer, params=[p for p in net.parameters() if p.requires_grad], autocast=autocast,
        accumulate=accumulate, total_rows=shard.n_train if shard else None, reduce=all_reduce_sum if shard else None,
    )
    fns, choice = plan_stepper(config, prepared, all_callbacks, resume=resume is not None,
                               checkpoints=hook is not None)
    if fns is not None:
        stepper = CompiledStepper(fns, objective.X, objective.y, lr=config.lr,
                                  lr_schedule=_lr_sequence(config, prepared.expected_steps))
    else:
        stepper = EagerStepper(objective, prepared.optimizer, prepared.schedule, scheduler=prepared.scheduler,
                               policy=config.nonfinite_policy, clip_norm=config.clip_norm,
                               clip_value=config.clip_value, shard=shard)
    with deterministic_mode(config.deterministic, config.seed):
        outcome = train_loop(
            stepper, objective, prepared.data, stop, eval_every=prepared.eval_every, log_every=prepared.log_every,
            layer_mode=config.layer_mode, callbacks=all_callbacks, guard=guard, shard=shard, checkpoint=hook,
            resume=None if resume is None else resume["loop"],
        )
    return make_result(config, prepared, outcome, choice.to_record())


def make_result(config: RunConfig, prepared: PreparedRun, outcome: LoopOutcome, engine: dict[str, Any]) -> RunResult:
    """The run record's parts (config with resolved defaults, environment, final, history, events,
    diagnostics) and the trained model, from a finished loop; ``engine`` says how it ran."""
    net = prepared.model
    resolved = config.to_dict()
    resolved.update(
        model=prepared.model_spec, loss=prepared.loss_name,
        batch_size=prepared.schedule.batch_size, chunk_size=prepared.chunk_size,
        eval_every=prepared.eval_every, log_every=prepared.log_every,
    )
    final = dict(outcome.final)
    shard = prepared.shard
    final.update(
        n_train=shard.n_train if shard else prepared.data.n_train,
        n_test=shard.n_test if shard else prepared.data.n_test,
        parameters=sum(p.numel() for p in net.parameters()),
        engine=engine,
    )
    return RunResult(
        config=resolved, environment=environment_info(config, prepared.device, prepared.chunk), final=final,
        history=outcome.history, events=outcome.events, diagnostics=outcome.diagnostics, model=net,
    )


def plan_stepper(
    config: RunConfig, prepared: PreparedRun, callbacks: Sequence[Callback], *, resume: bool, checkpoints: bool
) -> tuple[StepFunctions | None, StepperChoice]:
    """The compiled step functions or None (eager) for this run, and why (``config.compile``;
    see :func:`gdlab.engine.choose.choose_stepper`)."""
    schedule = config.schedule if config.schedule not in (None, "constant") else None
    blocked = compiled_blocker(
        regime=config.regime, optimizer=config.optimizer, model=prepared.model, layer_mode=config.layer_mode,
        schedule=schedule, step_budget=prepared.expected_steps is not None,
        callbacks=callbacks, distributed=prepared.shard is not None, checkpoints=checkpoints, resume=resume,
        autocast=config.autocast or (config.accumulate if config.accumulate not in (None, config.dtype) else None),
    )

    def make_functions() -> StepFunctions:
        objective = FunctionalObjective(prepared.model, prepared.loss_fn, prepared.chunk_size, config.l1, config.l2)
        rule = functional_rule(config.optimizer, config.lr, **config.optimizer_params)
        return StepFunctions(objective, rule, block_length(prepared.eval_every), config.clip_norm, config.clip_value)

    data = prepared.data
    return choose_stepper(
        config.compile, blocked, make_functions, lr=config.lr, model=prepared.model, loss_fn=prepared.loss_fn,
        X=data.X_train, y=data.y_train, chunk_size=prepared.chunk_size, deterministic=config.deterministic,
        expected_steps=prepared.expected_steps, time_budget_s=config.time_budget_s,
    )


def _lr_sequence(config: RunConfig, steps: int | None) -> list[float] | None:
    """The learning rate of each step 0..steps under the config's schedule (None: constant)."""
    if config.schedule in (None, "constant") or steps is None:
        return None
    probe = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([probe], lr=config.lr)
    scheduler = build_scheduler(config.schedule, optimizer, steps)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without optimizer.step()
        for _ in range(steps + 1):
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            scheduler.step()
    return lrs


def make_regularizer(model: nn.Module, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    """R(theta) of ``model`` as a closure for the engine, or None when both coefficients are 0."""
    if not (l1 or l2):
        return None
    return lambda: regularization_term(model, l1=l1, l2=l2)


def _checkpoint_payload(config: RunConfig, prepared: PreparedRun, loop_state: dict[str, Any]) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "model": prepared.model.state_dict(),
        "optimizer": prepared.optimizer.state_dict(),
        "scheduler": prepared.scheduler.state_dict() if prepared.scheduler is not None else None,
        "schedule": prepared.schedule.state_dict(),
        "rng": rng_state(),
        "loop": loop_state,
        "chunk_size": prepared.chunk_size,
    }


def restore(prepared: PreparedRun, payload: dict[str, Any]) -> None:
    """Load a checkpoint's states into a freshly prepared run (GdlabError on a mismatch)."""
    try:
        prepared.model.load_state_dict(payload["model"])
        prepared.optimizer.load_state_dict(payload["optimizer"])
        if prepared.scheduler is not None and payload.get("scheduler") is not None:
            prepared.scheduler.load_state_dict(payload["scheduler"])
        prepared.schedule.load_state_dict(payload["schedule"])
        set_rng_state(payload["rng"])
        # A calibrated chunk size may differ on resume; the checkpointed one keeps the run exact.
        if payload.get("chunk_size") and payload["chunk_size"] != prepared.chunk_size:
            prepared.chunk_size = int(payload["chunk_size"])
            prepared.chunk = ChunkChoice(prepared.chunk_size, "checkpoint")
        prepared.restored = True
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise GdlabError(f"the checkpoint does not match this run's model or optimizer ({first}); "
                         "resume with the checkpoint's own directory") from None


@contextlib.contextmanager
def deterministic_mode(enabled: bool, seed: int) -> Iterator[None]:
    """With ``enabled``: torch's deterministic algorithms (an error instead of a silently
    nondeterministic kernel), cuDNN autotuning off, and the Python, NumPy and torch generators
    seeded; the previous settings are restored afterwards."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def diagnostic_callbacks(config: RunConfig) -> list[Callback]:
    """The gradient-health and sharpness trackers the config asks for (none by default)."""
    callbacks: list[Callback] = []
    if config.health_every:
        thresholds = HealthThresholds(
            vanishing_ratio=config.vanishing_ratio, exploding_factor=config.exploding_factor
        )
        callbacks.append(HealthCallback(config.health_every, thresholds))
    if config.sharpness_every:
        callbacks.append(SharpnessCallback(config.sharpness_every, config.sharpness_iters, seed=config.seed))
    return callbacks


def check_output_dir(out_dir: str | Path) -> Path:
    """Fail early (before training) if ``out_dir`` cannot become a run directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GdlabError(f"--out '{out}' exists and is not a directory; choose another path")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise GdlabError(f"--out '{out}': '{parent}' is not writable; choose a writable directory")
    return out


def save_run(result: RunResult, out_dir: str | Path) -> Path:
    """Write ``run.json`` (the record) and ``params.pt`` (the model's state_dict) into ``out_dir``.

    Files are written to a temporary directory beside ``out_dir`` and moved in place at the end, so
    an error never leaves a half-written run directory.
    """
    out = check_output_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "run.json").write_text(json.dumps(result.to_record(), indent=2) + "\n")
        if result.model is not None:
            torch.save(result.model.state_dict(), tmp / "params.pt")
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    except OSError as exc:
        raise GdlabError(
            f"cannot save the run to '{out}' ({exc.strerror or exc}); free space or choose another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_run(run_dir: str | Path) -> PreparedRun:
    """Rebuild a saved run (``run.json`` + ``params.pt`` from :func:`save_run`) with its trained
    parameters loaded (``torch.load(weights_only=True)``: no pickled code is executed)."""
    run_dir = Path(run_dir)
    record_path, params_path = run_dir / "run.json", run_dir / "params.pt"
    for path in (record_path, params_path):
        if not path.is_file():
            raise GdlabError(
                f"'{path}' is missing; give a directory written by 'gdlab train --out DIR'"
            )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        config_data = record["config"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise GdlabError(f"'{record_path}' is not a gdlab run record; re-save the run with --out") from None
    config = RunConfig.from_dict(config_data)
    prepared = prepare(config)
    try:
        state = torch.load(params_path, map_location=prepared.device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdlabError(f"cannot load '{params_path}' ({first[:200]}); re-save the run with --out") from None
    try:
        prepared.model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise GdlabError(
            f"'{params_path}' does not match model '{config.model}' ({first}); use the params.pt "
            "saved with this run.json"
        ) from None
    return prepared

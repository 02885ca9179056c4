"""Build a run from a validated RunConfig: device, data, model, loss, optimizer, schedules and
the diagnostics callbacks, every user mistake raised as a GdlabError before any step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gdlab.config import RunConfig
from gdlab.data import Dataset, load_data_source, load_task
from gdlab.data.presets import PRESETS
from gdlab.data.tasks import TASKS
from gdlab.diagnostics.health import HealthThresholds
from gdlab.diagnostics.tracking import HealthCallback, SharpnessCallback
from gdlab.distributed import Shard, broadcast_parameters, make_shard
from gdlab.engine.calibrate import ChunkChoice, chunk_choice
from gdlab.engine.loop import Callback, StopRules
from gdlab.engine.regimes import SampleSchedule, make_schedule
from gdlab.errors import GdlabError, unknown_name
from gdlab.models import build_model
from gdlab.optim import build_optimizer, get_loss, loss_output_dim
from gdlab.optim.regularization import make_regularizer
from gdlab.optim.losses import LossFn
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
    return load_task(config.task, seed=config.data_seed_value, n_samples=config.n_samples,
                     test_fraction=config.test_fraction, standardize=config.standardize, dtype=dtype)


def _check_model_io(model: nn.Module, data: Dataset, output_dim: int, spec: str) -> None:
    """Run two rows through the model so shape mismatches fail now, with a clear message."""
    probe = data.head(2)
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
    target_dim = data.output_dim if data.task_type == "regression" else None
    output_dim = loss_output_dim(loss_name, data.task_type, data.num_classes, target_dim)
    spec = config.model or (task.default_model if task else "linear")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        built = build_model(model if model is not None else spec, data.input_shape, output_dim,
                            seed=config.seed, image_shape=data.image_shape, dtype=DTYPES[config.dtype])
    _check_model_io(built, data, output_dim, spec if model is None else type(model).__name__)
    built = built.to(device)
    data = data.to(device)
    shard = make_shard(data.n_train, data.n_test)
    if shard is not None:
        if data.streamed:
            raise GdlabError("a DataLoader is streamed by one process; for a multi-process run give the data "
                             "as tensors, a file or a task (each process then holds its share of the rows)")
        if config.sharpness_every:
            raise GdlabError(
                "sharpness tracking needs the whole training set in one process; drop "
                "--sharpness-every for a multi-process run (or run gdlab sharpness on the saved run)"
            )
        data = replace(data, X_train=data.X_train[shard.train_start:shard.train_stop],
                       y_train=data.y_train[shard.train_start:shard.train_stop],
                       X_test=data.X_test[shard.test_start:shard.test_stop],
                       y_test=data.y_test[shard.test_start:shard.test_stop])
        broadcast_parameters(built)
    optimizer = build_optimizer(config.optimizer, [p for p in built.parameters() if p.requires_grad],
                                config.lr, **config.optimizer_params)
    n_train = shard.n_train if shard else data.n_train
    schedule = make_schedule(config.regime, n_train, batch_size=config.batch_size,
                             last_batch=config.last_batch, seed=config.seed + 1)
    # Calibration times candidate chunk sizes; a deterministic run must not depend on timing.
    if data.streamed:  # the loader's batches are the chunks
        if config.chunk_size is not None:
            raise GdlabError("chunk_size does not apply to a DataLoader, whose batch_size is the chunk; "
                             "leave chunk_size out or give the loader another batch_size")
        chunk_info = ChunkChoice(data.X_train.batch_size, "loader")
    else:
        chunk_info = chunk_choice(built, loss_fn, data.X_train, data.y_train, chunk_size=config.chunk_size,
                                  memory_budget_mb=config.memory_budget_mb, autocast=precision_dtypes(config)[0],
                                  calibrate=not config.deterministic)
    chunk = chunk_info.size
    if config.layer_mode == "train" and any(isinstance(m, _BatchNorm) for m in built.modules()):
        rest = schedule.n % schedule.batch_size if schedule.last_batch == "keep" else 0
        last_chunk = data.n_train % chunk if schedule.is_full else 0  # a full-batch pass ends on N mod chunk rows
        smallest = min(chunk, schedule.batch_size, rest or schedule.batch_size, last_chunk or chunk)
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


def stop_rules(config: RunConfig) -> StopRules:
    """The loop's stop rules from the config's budgets, tolerances and divergence factor."""
    return StopRules(max_steps=config.steps, max_epochs=config.max_epochs, loss_tol=config.loss_tol,
                     grad_tol=config.grad_tol, time_budget_s=config.time_budget_s,
                     divergence_factor=config.divergence_factor)


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

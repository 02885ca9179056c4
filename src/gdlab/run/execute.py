"""Run a prepared run: choose its stepper, drive the one training loop, checkpoint and resume,
and deterministic mode."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gdlab.checkpoint import rng_state, set_rng_state, write_checkpoint
from gdlab.config import RunConfig
from gdlab.data import Dataset
from gdlab.distributed import all_reduce_sum
from gdlab.engine.calibrate import ChunkChoice
from gdlab.engine.choose import StepperChoice, choose_stepper, compiled_blocker
from gdlab.engine.objective import FullBatchObjective, FunctionalObjective
from gdlab.engine.loop import Callback, CheckpointHook, GuardOptions, train_loop
from gdlab.engine.steppers.compiled import CompiledStepper, StepFunctions, block_length
from gdlab.engine.steppers.eager import EagerStepper
from gdlab.errors import GdlabError
from gdlab.optim.functional import functional_rule
from gdlab.optim.schedules import schedule_lrs
from gdlab.run.build import PreparedRun, diagnostic_callbacks, precision_dtypes, prepare, stop_rules
from gdlab.run.record import RunResult, make_result


def run(config: RunConfig, callbacks: Sequence[Callback] = (), model: nn.Module | None = None,
        prepared: PreparedRun | None = None, checkpoint_dir: str | Path | None = None,
        resume: dict[str, Any] | None = None, data: Dataset | None = None) -> RunResult:
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
    stop = stop_rules(config)
    guard = GuardOptions(policy=config.nonfinite_policy, lr_factor=config.rollback_lr_factor,
                         max_rollbacks=config.max_rollbacks)
    all_callbacks = [*diagnostic_callbacks(config), *callbacks]
    autocast, accumulate = precision_dtypes(config)
    shard = prepared.shard
    objective = FullBatchObjective(
        net, prepared.loss_fn, prepared.data.X_train, prepared.data.y_train, prepared.chunk_size,
        prepared.regularizer, autocast=autocast, accumulate=accumulate,
        total_rows=shard.n_train if shard else None, reduce=all_reduce_sum if shard else None,
    )
    fns, choice = plan_stepper(config, prepared, all_callbacks, resume=resume is not None,
                               checkpoints=hook is not None)
    if fns is not None:
        stepper = CompiledStepper(fns, objective.X, objective.y, lr=config.lr,
                                  lr_schedule=lr_sequence(config, prepared.expected_steps))
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


def plan_stepper(config: RunConfig, prepared: PreparedRun, callbacks: Sequence[Callback], *, resume: bool,
                 checkpoints: bool) -> tuple[StepFunctions | None, StepperChoice]:
    """The compiled step functions or None (eager) for this run, and why (``config.compile``;
    see :func:`gdlab.engine.choose.choose_stepper`)."""
    schedule = config.schedule if config.schedule not in (None, "constant") else None
    blocked = compiled_blocker(
        regime=config.regime, optimizer=config.optimizer, model=prepared.model, layer_mode=config.layer_mode,
        schedule=schedule, step_budget=prepared.expected_steps is not None,
        callbacks=callbacks, distributed=prepared.shard is not None, checkpoints=checkpoints, resume=resume,
        streamed=prepared.data.streamed,
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


def lr_sequence(config: RunConfig, steps: int | None) -> list[float] | None:
    """The learning rate of each step 0..steps under the config's schedule (None: constant)."""
    if config.schedule in (None, "constant") or steps is None:
        return None
    return schedule_lrs(config.schedule, config.lr, steps + 1, total_steps=steps)


def _checkpoint_payload(config: RunConfig, prepared: PreparedRun, loop_state: dict[str, Any]) -> dict[str, Any]:
    return {"config": config.to_dict(), "model": prepared.model.state_dict(),
            "optimizer": prepared.optimizer.state_dict(),
            "scheduler": prepared.scheduler.state_dict() if prepared.scheduler is not None else None,
            "schedule": prepared.schedule.state_dict(), "rng": rng_state(), "loop": loop_state,
            "chunk_size": prepared.chunk_size}


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

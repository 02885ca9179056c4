"""Sweeps: many runs of one task that differ only in learning rate and seed, stacked when it pays.

:func:`run_sweep` takes K run configs and returns K run results, each equal (to float rounding)
to :func:`gdlab.run.run` on its config. When the runs can be stacked
(:func:`sweep_blocker`) and a short measurement says K stacked copies step faster than K
separate runs, they train as one stacked model (:mod:`gdlab.engine.steppers.stacked`);
otherwise they run one after another. ``final.engine`` of every result says which and why.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gdlab.config import RunConfig
from gdlab.engine.choose import stacked_blocker
from gdlab.engine.objective import FullBatchObjective, full_batch_loss_and_grad
from gdlab.engine.loop import GuardOptions, loop_steps, train_lanes
from gdlab.engine.regimes import make_schedule
from gdlab.engine.steppers.compiled import block_length
from gdlab.engine.steppers.stacked import (StackedForward, StackedLane, StackedObjective, StackedSteps,
                                          stacked_step)
from gdlab.optim import build_optimizer
from gdlab.optim.functional import functional_rule
from gdlab.optim.regularization import make_regularizer
from gdlab.run import PreparedRun, RunResult, make_result, prepare, run
from gdlab.run.build import stop_rules
from gdlab.run.execute import lr_sequence

VARYING = ("lr", "seed")


def sweep_blocker(configs: Sequence[RunConfig], prepared: PreparedRun) -> str | None:
    """Why these runs cannot train as one stacked model (one phrase), or None when they can."""
    if len(configs) < 2:
        return "a single run"
    first = configs[0]
    fixed = {k: v for k, v in first.to_dict().items() if k not in VARYING}
    for c in configs[1:]:
        other = {k: v for k, v in c.to_dict().items() if k not in VARYING}
        if other != fixed:
            keys = sorted(k for k in fixed if fixed[k] != other.get(k))
            return f"the runs differ in {', '.join(keys)} (only lr and seed may vary)"
    if len({c.data_seed_value for c in configs}) > 1:
        return "the runs use different data (set data_seed so that seeds vary only the model)"
    return stacked_blocker(
        optimizer=first.optimizer, policy=first.nonfinite_policy, model=prepared.model, loss=prepared.loss_name,
        per_step_work=bool(first.health_every or first.sharpness_every or first.checkpoint_every),
        autocast=bool(first.autocast or first.accumulate),
        distributed=prepared.shard is not None,
    )


def _stack(models: Sequence[torch.nn.Module]) -> list[torch.Tensor]:
    per_model = [[p.detach() for p in m.parameters() if p.requires_grad] for m in models]
    return [torch.stack(group).clone() for group in zip(*per_model)]


def _measure(objective: StackedObjective, rule_name: str, configs: Sequence[RunConfig], params: list[torch.Tensor],
             prepared: PreparedRun, repeats: int = 3) -> dict[str, float]:
    """Seconds per step of the K stacked copies and of one eager run (gradient + update), on
    throwaway copies of the first batch: the two taken in alternation and the fastest of each
    kept, so that a first step's set-up or a burst of load on a shared machine (which only ever
    adds time) does not decide: with medians of three taken one kind after the other, a digits
    MLP sweep was once stacked although stacking it was 16 % slower than running it sequentially."""
    c = configs[0]
    rule = functional_rule(rule_name, c.lr, **c.optimizer_params)
    data = prepared.data
    rows = prepared.schedule.n if prepared.schedule.is_full else prepared.schedule.batch_size
    X, y = data.X_train[:rows], data.y_train[:rows]
    lrs = torch.tensor([cfg.lr for cfg in configs], dtype=params[0].dtype)
    state = rule.init(params)
    model = copy.deepcopy(prepared.model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(c.optimizer, trainable, c.lr, **c.optimizer_params)
    regularizer = make_regularizer(model, c.l1, c.l2)
    stacked, single = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stacked_step(objective, rule, params, state, lrs, X, y, False, c.clip_norm, c.clip_value)
        t1 = time.perf_counter()
        full_batch_loss_and_grad(model, prepared.loss_fn, X, y, chunk_size=prepared.chunk_size,
                                 regularizer=regularizer, params=trainable)
        opt.step()
        stacked.append(t1 - t0)
        single.append(time.perf_counter() - t1)
    return {"stacked": min(stacked), "single": min(single)}


def run_sweep(configs: Sequence[RunConfig], *, stacked: str = "auto",
              on_result: Callable[[int, RunResult], None] | None = None) -> list[RunResult]:
    """Run every config (they may differ only in lr and seed to stack); results in input order.

    ``stacked``: ``auto`` (stack when allowed and measured faster than K runs), ``on`` (stack
    when allowed), ``off`` (one run after another). ``on_result(i, result)`` is called as each
    result is ready."""
    configs = list(configs)
    if not configs:
        return []
    for c in configs:
        c.validate()
    first = prepare(configs[0])
    reason = "--stacked off" if stacked == "off" else sweep_blocker(configs, first)
    timing: dict[str, float] = {}
    if reason is None:
        preparations = {configs[0].seed: first}
        for c in configs[1:]:
            if c.seed not in preparations:
                preparations[c.seed] = prepare(c)
        params = _stack([preparations[c.seed].model for c in configs])
        objective = StackedObjective(
            StackedForward(first.model), first.loss_fn,
            [p.dim() >= 2 for p in first.model.parameters() if p.requires_grad],
            configs[0].l1, configs[0].l2, first.chunk_size)
        if stacked == "auto":
            timing = _measure(objective, configs[0].optimizer, configs, params, first)
            if timing["stacked"] >= 0.9 * len(configs) * timing["single"]:
                reason = (f"a stacked step of {len(configs)} copies ({timing['stacked']:.3g} s) is not faster "
                          f"than {len(configs)} single steps ({timing['single']:.3g} s each)")
    if reason is not None:
        results = []
        for i, c in enumerate(configs):
            result = run(c, prepared=first if i == 0 else None)
            result.final["engine"]["sweep"] = f"sequential: {reason}"
            results.append(result)
            if on_result is not None:
                on_result(i, result)
        return results
    return _run_stacked(configs, preparations, params, objective, timing, on_result)


def _run_stacked(configs: list[RunConfig], preparations: dict[int, PreparedRun], params: list[torch.Tensor],
                 objective: StackedObjective, timing: dict[str, float],
                 on_result: Callable[[int, RunResult], None] | None) -> list[RunResult]:
    first = preparations[configs[0].seed]
    c0 = configs[0]
    K = len(configs)
    rule = functional_rule(c0.optimizer, c0.lr, **c0.optimizer_params)
    n = first.data.n_train
    if len(preparations) == 1:
        schedules = [first.schedule] * K
    else:
        schedules = [make_schedule(c.regime, n, batch_size=c.batch_size, last_batch=c.last_batch, seed=c.seed + 1)
                     for c in configs]
    steps = first.expected_steps
    columns = []
    for c in configs:
        seq = lr_sequence(c, steps)
        columns.append(seq if seq is not None else [c.lr] * ((steps or 0) + 1))
    lr_table = torch.tensor(columns, dtype=params[0].dtype).T.contiguous()
    stop = stop_rules(c0)
    shared = StackedSteps(objective, rule, params, first.data, schedules, lr_table, clip_norm=c0.clip_norm,
                          clip_value=c0.clip_value, block=block_length(first.eval_every))
    models, runs = [], []
    for k, c in enumerate(configs):
        model = copy.deepcopy(preparations[c.seed].model)
        own = FullBatchObjective(model, first.loss_fn, first.data.X_train, first.data.y_train, first.chunk_size,
                                 make_regularizer(model, c.l1, c.l2))
        models.append(model)
        runs.append(loop_steps(StackedLane(shared, k, model), own, first.data, stop, eval_every=first.eval_every,
                               log_every=first.log_every, layer_mode=c.layer_mode, guard=GuardOptions(policy="stop")))
    torch.manual_seed(c0.seed)
    outcomes = train_lanes(runs, shared.advance)
    results = []
    engine = {"path": "stacked", "reason": f"{K} runs stacked into one model", "copies": K, "block": None,
              "compile_s": None, "step_s": dict(timing)}
    for k, (c, model, outcome) in enumerate(zip(configs, models, outcomes)):
        source = preparations[c.seed]
        own = dataclasses.replace(source, config=c, model=model, schedule=schedules[k])
        result = make_result(c, own, outcome, dict(engine))
        results.append(result)
        if on_result is not None:
            on_result(k, result)
    return results


def sweep_configs(base: RunConfig, *, lrs: Sequence[float] = (), seeds: Sequence[int] = ()) -> list[RunConfig]:
    """The configs of a grid over ``lrs`` x ``seeds`` (either may be empty: the base's value)."""
    out = []
    for seed in seeds or [base.seed]:
        for lr in lrs or [base.lr]:
            data: dict[str, Any] = {**base.to_dict(), "lr": float(lr), "seed": int(seed)}
            out.append(RunConfig.from_dict(data))
    return out

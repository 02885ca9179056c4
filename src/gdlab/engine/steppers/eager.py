"""The eager stepper: the model itself trained by its torch.optim optimizer, one step per call.

Each step draws its rows from the sample schedule, computes the exact loss and gradient of those
rows (chunked, summed over processes), and on :meth:`EagerStepper.accept` saves the guard's
snapshot, clips and calls ``optimizer.step()`` (``step(closure)`` for the line search, whose
closure is the same rows' objective) and ``scheduler.step()``. Any regime, any optimizer, any
number of processes; the gradient is in ``p.grad`` between ``run`` and ``accept``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.optim.optimizer as _optim_module
from torch import nn
from torch.utils.data import DataLoader

from gdlab.distributed import Shard
from gdlab.engine.chunks import loader_batch
from gdlab.engine.objective import FullBatchObjective, full_batch_loss, full_batch_loss_and_grad, gradient_norm
from gdlab.engine.regimes import SampleSchedule
from gdlab.engine.steppers import Block, Clip, Stepper
from gdlab.optim.clipping import clip_gradients
from gdlab.optim.linesearch import ArmijoLineSearch


class EagerStepper(Stepper):
    """torch.optim steps on ``objective.model`` (see the module docstring). ``policy`` is the
    guard's: ``rollback`` snapshots parameters, optimizer and scheduler before each update,
    ``stop`` only the parameters, ``raise`` nothing."""

    name = "eager"
    exposes_gradients = True

    def __init__(self, objective: FullBatchObjective, optimizer: torch.optim.Optimizer, schedule: SampleSchedule,
                 *, scheduler: Any = None, policy: str = "rollback", clip_norm: float | None = None,
                 clip_value: float | None = None, shard: Shard | None = None) -> None:
        self.objective, self.optimizer, self.schedule, self.scheduler = objective, optimizer, schedule, scheduler
        self.model = objective.model
        self.params = list(objective.params)
        self.full = schedule.is_full
        self.shard = shard
        self.n = objective.rows  # N over all ranks, once (for a DataLoader it checks the loader)
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.clipping = clip_norm is not None or clip_value is not None
        self.line_search = isinstance(optimizer, ArmijoLineSearch)
        self.snapshot = _Snapshot(policy == "rollback", self.params) if policy in ("rollback", "stop") else None
        self._batch: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._loss = 0.0

    def run(self, step: int, count: int) -> Block:
        t0 = time.perf_counter()
        o = self.objective
        Xb, yb, rows = _next_batch(self.schedule, o.X, o.y, self.n, self.shard, self.params[0])
        res = full_batch_loss_and_grad(
            self.model, o.loss_fn, Xb, yb, chunk_size=o.chunk_size, regularizer=o.regularizer, params=self.params,
            total_rows=rows, reduce=o.reduce, autocast=o.autocast, accumulate=o.accumulate)
        self._batch, self._loss = (Xb, yb, rows), res.loss
        gnorm = gradient_norm(self.params)
        lr = float(self.optimizer.param_groups[0]["lr"])
        return Block([res.loss], [gnorm], [lr], [res.num_samples], time.perf_counter() - t0)

    def accept(self, k: int, step: int) -> tuple[list[Clip | None], float]:
        if k == 0:
            return [], 0.0
        t0 = time.perf_counter()
        if self.snapshot is not None:
            self.snapshot.save(step, self.model, self.optimizer, self.scheduler)
        clip = None
        if self.clipping:
            c = clip_gradients(self.params, max_norm=self.clip_norm, max_value=self.clip_value)
            clip = Clip(c.clipped, c.factor, c.norm_before, c.norm_after)
        if self.line_search:
            Xb, yb, rows = self._batch
            o = self.objective

            def closure() -> float:
                return full_batch_loss(self.model, o.loss_fn, Xb, yb, chunk_size=o.chunk_size,
                                       regularizer=o.regularizer, total_rows=rows, reduce=o.reduce,
                                       autocast=o.autocast, accumulate=o.accumulate)

            optimizer_step(self.optimizer, closure, loss=self._loss)
        else:
            optimizer_step(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()
        return [clip], time.perf_counter() - t0

    def back(self) -> int | None:
        if self.snapshot is None or self.snapshot.step < 0:
            return None
        self.snapshot.restore(self.model, self.optimizer, self.scheduler)
        return self.snapshot.step

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` now and for the rest of the schedule: every
        later rate is ``factor`` times what it would have been (each torch scheduler gdlab builds
        is homogeneous in its rates: base_lrs, the current lr and cosine's floor scale together)."""
        optimizer, scheduler = self.optimizer, self.scheduler
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "t_prev" in group:
                group["t_prev"] *= factor
        pending = [scheduler] if scheduler is not None else []
        while pending:
            sched = pending.pop()
            if hasattr(sched, "base_lrs"):
                sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            if isinstance(getattr(sched, "eta_min", None), float):  # cosine's floor: the whole schedule scales
                sched.eta_min *= factor
            if hasattr(sched, "_last_lr"):
                sched._last_lr = [g["lr"] for g in optimizer.param_groups]
            pending.extend(getattr(sched, "_schedulers", []))

    def lr(self, step: int) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def loss_evaluations(self) -> int | None:
        return self.optimizer.state_info["total_evaluations"] if self.line_search else None


def optimizer_step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
    """``optimizer.step(*args, **kwargs)``, without torch.optim's wrapper around ``step`` while
    nothing would see it. The wrapper opens a profiler range and runs the registered step hooks;
    with no hook (global or the optimizer's own) and no profiler running it does nothing else,
    yet costs about 23 us a step (measured on torch 2.13: 43 against 20 us for SGD on the digits
    MLP's 9,610 parameters): 1.5 % of a digits MLP step, more of a small stochastic one. A step
    that is not that wrapper, one the instance overrides (as a torch lr scheduler does, to see that
    the optimizer stepped first), any hook or a running profiler goes through ``optimizer.step``,
    and so does everything when a torch version no longer has the attributes looked at here."""
    step = type(optimizer).step
    raw = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    if raw is None or "step" in vars(optimizer) or torch.autograd._profiler_enabled():
        return optimizer.step(*args, **kwargs)
    hooks = [getattr(optimizer, "_optimizer_step_pre_hooks", None),
             getattr(optimizer, "_optimizer_step_post_hooks", None),
             getattr(_optim_module, "_global_optimizer_pre_hooks", None),
             getattr(_optim_module, "_global_optimizer_post_hooks", None)]
    if any(h is None or len(h) for h in hooks):
        return optimizer.step(*args, **kwargs)
    return raw(optimizer, *args, **kwargs)


class _Snapshot:
    """Parameters and buffers (and, for rollback, optimizer and scheduler state) at one step.

    Policy ``stop`` only needs the parameters back, so it skips the optimizer and scheduler state.
    A model whose state is exactly its trainable ``params`` (no buffers, nothing frozen or tied)
    is saved and restored by one fused copy of ``params``, without building its state dict,
    which costs more than the copy on small stochastic steps."""

    def __init__(self, with_optimizer: bool, params: Sequence[torch.Tensor]) -> None:
        self.with_optimizer = with_optimizer
        self.params = list(params)
        self.sources = [p.detach() for p in self.params]  # the same storage: copies record no graph
        self.step = -1
        self.only_params: bool | None = None
        self.param_copies: list[torch.Tensor] | None = None
        self.model_state: dict[str, torch.Tensor] | None = None
        self.optimizer_state: _OptimizerState | dict[str, Any] | None = None
        self.scheduler_state: dict[str, Any] | None = None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if self.only_params is None:
            self.only_params = _state_is_params(model, self.params)
        if self.only_params:
            self._save_params()
        else:
            self._save_state(model)
        if self.with_optimizer:
            if _OptimizerState.applies(optimizer):
                if not isinstance(self.optimizer_state, _OptimizerState):
                    self.optimizer_state = _OptimizerState()
                self.optimizer_state.save(optimizer)
            else:
                self.optimizer_state = _copy_state(optimizer.state_dict())
            self.scheduler_state = _copy_state(scheduler.state_dict()) if scheduler is not None else None
        self.step = step

    def _save_params(self) -> None:
        if self.param_copies is None:
            self.param_copies = [p.clone() for p in self.sources]
        else:
            torch._foreach_copy_(self.param_copies, self.sources)

    def _save_state(self, model: nn.Module) -> None:
        state = model.state_dict()
        if self.model_state is None or self.model_state.keys() != state.keys():
            self.model_state = {k: v.detach().clone() for k, v in state.items()}
        else:
            torch._foreach_copy_(list(self.model_state.values()), list(state.values()))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if self.only_params:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.param_copies)
        else:
            model.load_state_dict(self.model_state)
        if self.with_optimizer:
            if isinstance(self.optimizer_state, _OptimizerState):
                self.optimizer_state.restore(optimizer)
            else:
                optimizer.load_state_dict(self.optimizer_state)
            if scheduler is not None and self.scheduler_state is not None:
                scheduler.load_state_dict(self.scheduler_state)


class _OptimizerState:
    """A torch.optim optimizer's per-parameter state and hyperparameters, saved into and restored
    from copies kept between steps: after the first save only the state's tensors are copied (one
    fused copy), without building and deep-copying a state dict. The same values as
    ``load_state_dict(copy of state_dict())``, for an optimizer that keeps its state in
    ``optimizer.state`` and ``param_groups`` (:meth:`applies`)."""

    def __init__(self) -> None:
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self.groups: list[dict[str, Any]] = []

    @staticmethod
    def applies(optimizer: torch.optim.Optimizer) -> bool:
        kind = type(optimizer)
        return (kind.state_dict is torch.optim.Optimizer.state_dict
                and kind.load_state_dict is torch.optim.Optimizer.load_state_dict)

    def save(self, optimizer: torch.optim.Optimizer) -> None:  # state tensors need no grad mode: they have no graph
        # immutable hyperparameters are shared as they are (most of a group), the rest copied
        self.groups = [{k: v if isinstance(v, _IMMUTABLE) else _copy_state(v) for k, v in g.items() if k != "params"}
                       for g in optimizer.param_groups]
        self.state = {p: self.state.get(p, {}) for p in optimizer.state}
        _copy_entries(self.state, optimizer.state)

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        for p in [p for p in optimizer.state if p not in self.state]:
            del optimizer.state[p]
        _copy_entries(optimizer.state, self.state)
        for group, saved in zip(optimizer.param_groups, self.groups):
            group.update(_copy_state(saved))


def _copy_entries(target: dict[Any, dict[str, Any]], source: dict[Any, dict[str, Any]]) -> None:
    """Make each ``target[p]`` hold the values of ``source[p]``: tensors of the same shape and
    dtype copied in place (one fused copy), anything else replaced by a copy."""
    into, values = [], []
    for p, entries in source.items():
        mine = target.setdefault(p, {})
        for key in [k for k in mine if k not in entries]:
            del mine[key]
        for key, value in entries.items():
            old = mine.get(key)
            if (type(value) is torch.Tensor and type(old) is torch.Tensor and old is not value
                    and old.shape == value.shape and old.dtype == value.dtype and old.device == value.device):
                into.append(old)
                values.append(value)
            else:
                mine[key] = _copy_state(value)
    if into:
        torch._foreach_copy_(into, values)


def _state_is_params(model: nn.Module, params: Sequence[torch.Tensor]) -> bool:
    """Whether ``model.state_dict()`` holds exactly the tensors ``params``, in any order."""
    state = model.state_dict(keep_vars=True)
    return len(state) == len(params) and {id(v) for v in state.values()} == {id(p) for p in params}


_IMMUTABLE = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _copy_state(obj: Any) -> Any:
    """A deep copy of an optimizer or scheduler state dict: dicts, lists and tuples rebuilt,
    tensors cloned, immutable values shared, anything else through ``copy.deepcopy``. The same
    values as ``copy.deepcopy`` (only tensors shared inside ``obj`` come out as separate copies)
    at a fraction of its cost on a per-step snapshot."""
    kind = type(obj)
    if kind is torch.Tensor and not obj.requires_grad:
        return obj.clone()
    if kind is dict:
        return {k: _copy_state(v) for k, v in obj.items()}
    if kind is list:
        return [_copy_state(v) for v in obj]
    if kind is tuple:
        return tuple(_copy_state(v) for v in obj)
    if isinstance(obj, _IMMUTABLE):
        return obj
    return copy.deepcopy(obj)


def _next_batch(schedule: SampleSchedule, X: torch.Tensor | DataLoader, y: torch.Tensor | None, n: int,
                shard: Shard | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The inputs and targets of the next step's rows and their count over all ranks: all ``n``
    rows (full), a slice (one row: no index tensor, no gather), else a gather of the schedule's
    indices (across processes filtered to this rank's rows); from a DataLoader (``y`` None) the
    loader itself (full) or its dataset's rows, collated (see :func:`loader_batch`)."""
    if schedule.is_full:
        schedule.next_indices()
        return X, y, n
    if isinstance(X, DataLoader):
        idx = schedule.next_indices()
        return (*loader_batch(X, idx.tolist(), like=like), int(idx.numel()))
    if schedule.batch_size == 1 and shard is None:
        i = schedule.next_row()
        return X[i : i + 1], y[i : i + 1], 1
    idx = schedule.next_indices()
    rows = int(idx.numel())
    if shard is not None:
        mine = (idx >= shard.train_start) & (idx < shard.train_stop)
        idx = idx[mine] - shard.train_start
    idx = idx.to(X.device)
    return X[idx], y[idx], rows

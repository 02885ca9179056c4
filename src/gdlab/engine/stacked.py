"""Stacked sweeps: K copies of a small model trained at once as one stacked model.

Every parameter gets a leading dimension of K; copy k has its own learning rate (and, when the
copies differ in seed, its own initialisation and sample order); one forward and one backward
serve all copies. For small models, where per-step framework overhead rather than arithmetic is
the cost, K copies then cost about as much as one run.

Copy k follows exactly the steps its own run would (regimes full, minibatch, stochastic; the
update rules with a functional form; schedules; stopping rules; the guard with policy stop): its
history, events and final record are built as :func:`gdlab.engine.loop.train_loop` builds them,
and equal them to float rounding (tests). A copy that diverges or reaches its target stops there
(its parameters at that point are kept) while the others go on. Training time is the stacked
time divided by K (each copy's share), and a time budget holds for that share.

Stackable models: the zoo's linear/logistic models and MLPs without BatchNorm or Dropout
(:func:`stackable`); their stacked forward pass is one GEMM for a single-layer model whose input
the copies share, and a batched matrix product per layer otherwise (:class:`StackedForward`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdlab.engine.chunks import spans
from gdlab.engine.loop import StopRules, clip_event, guard_problem, history_record
from gdlab.engine.regimes import SampleSchedule
from gdlab.models.zoo import MLP, LinearModel
from gdlab.optim.functional import FunctionalRule, clip_functional, global_norm
from gdlab.optim.regularization import penalty

STACKED_LOSSES = ("mse", "cross_entropy", "bce")


def stackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be stacked (one phrase), or None when it can."""
    if not isinstance(model, (LinearModel, MLP)):
        return f"only the built-in linear, logistic and MLP models stack, not {type(model).__name__}"
    for m in model.modules():
        if not isinstance(m, (LinearModel, MLP, nn.Sequential, nn.Linear)) and list(m.parameters()):
            return f"layer {type(m).__name__} has parameters the stacked forward does not know"
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            return "BatchNorm/Dropout layers do not stack"
    return None


class StackedForward:
    """The forward pass of K copies of a LinearModel/MLP: ``(params, X) -> (B, K, out)``, params
    in ``model.parameters()`` order with a leading K; X (B, ...) shared by every copy or
    (K, B, ...) one batch per copy. The output is batch-major: row b of copy k is ``out[b, k]``.

    Layers are batched matrix products over the copies, except a single-layer model (linear,
    logistic) with a shared X: there the K copies are one (B, in) x (in, K*out) GEMM, already in
    (B, K, out) layout, because batched products of small matrices cost up to 20x a GEMM of the
    same size on some CPUs (645 us against 31 us for 32 copies of the breast_cancer logistic
    regression on an AMD EPYC). In an MLP the same GEMM for the first layer measured 15% slower
    (digits 64-128-10): its (B, K, hidden) output must be copied to (K, B, hidden) for the next
    layer's batched product."""

    def __init__(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        self.steps: list[tuple[str, Any]] = []
        modules = [model.linear] if isinstance(model, LinearModel) else list(model.layers)
        prefix = "linear" if isinstance(model, LinearModel) else "layers"
        for i, m in enumerate(modules):
            if isinstance(m, nn.Linear):
                base = prefix if isinstance(model, LinearModel) else f"{prefix}.{i}"
                w = names.index(f"{base}.weight")
                b = names.index(f"{base}.bias") if m.bias is not None else None
                self.steps.append(("linear", (w, b)))
            else:
                self.steps.append(("elementwise", m))
        self.single_layer = sum(kind == "linear" for kind, _ in self.steps) == 1

    def __call__(self, params: Sequence[Tensor], X: Tensor, per_copy: bool) -> Tensor:
        h = X.flatten(2) if per_copy else X.flatten(1)
        copies_first = False  # h is (K, B, f) when True
        for kind, what in self.steps:
            if kind != "linear":
                h = what(h)  # the MLP's activations are elementwise: any layout
                continue
            w, b = what
            W = params[w]
            K, out = W.shape[0], W.shape[1]
            if h.dim() == 2 and self.single_layer:
                flat = W.reshape(K * out, -1).T
                h = h @ flat if b is None else torch.addmm(params[b].reshape(K * out), h, flat)
                h = h.view(h.shape[0], K, out)
                continue
            h = torch.matmul(h, W.transpose(1, 2))  # (B, in) broadcast or (K, B, in) -> (K, B, out)
            copies_first = True
            if b is not None:
                h = h + params[b].unsqueeze(1)
        return h.transpose(0, 1) if copies_first else h


def per_copy_loss(name: str, out: Tensor, y: Tensor, per_copy: bool = False) -> Tensor:
    """The mean loss of each copy, (K,), for batch-major stacked outputs ``out`` (B, K, C) and
    targets ``y``, (B, ...) shared by the copies or (K, B, ...) one per copy (``per_copy``); the
    definitions of :mod:`gdlab.optim.losses`."""
    B, K = out.shape[0], out.shape[1]
    y = y.transpose(0, 1) if per_copy else y.unsqueeze(1)  # (B, K or 1, ...)
    if name == "mse":
        diff = out.reshape(B, K, -1) - y.reshape(B, y.shape[1], -1).to(out.dtype)
        return 0.5 * diff.square().sum(dim=2).mean(dim=0)
    labels = y.reshape(B, -1).expand(B, K)
    if name == "cross_entropy":
        flat = F.cross_entropy(out.reshape(B * K, -1), labels.reshape(B * K).long(), reduction="none")
        return flat.view(B, K).mean(dim=0)
    return F.binary_cross_entropy_with_logits(out.reshape(B, K), labels.to(out.dtype), reduction="none").mean(dim=0)


def per_copy_correct(out: Tensor, y: Tensor) -> Tensor:
    """Correct predictions of each copy, (K,), for outputs (B, K, C) and shared labels (B,): argmax
    of C logits, or logit > 0 for one output."""
    B, K = out.shape[0], out.shape[1]
    pred = (out.reshape(B, K) > 0).long() if out.shape[-1] == 1 else out.argmax(dim=-1)
    return (pred == y.reshape(B, 1).long()).sum(dim=0)


@dataclass
class StackedObjective:
    """Per-copy objectives ``L_k = (1/N) sum_i l(f_k(x_i), y_i) + R(theta_k)``, (K,)."""

    forward: StackedForward
    loss_name: str
    penalised: list[bool]
    l1: float = 0.0
    l2: float = 0.0
    chunk_size: int | None = None

    def regularizer(self, params: Sequence[Tensor]) -> Tensor | float:
        return penalty([p for p, pen in zip(params, self.penalised) if pen], self.l1, self.l2, copies=True)

    def data_loss(self, params: Sequence[Tensor], X: Tensor, y: Tensor, per_copy: bool) -> Tensor:
        n = int(X.shape[1] if per_copy else X.shape[0])
        total: Tensor | float = 0.0
        for start, stop in spans(n, self.chunk_size):
            Xc = X[:, start:stop] if per_copy else X[start:stop]
            yc = y[:, start:stop] if per_copy else y[start:stop]
            out = self.forward(params, Xc, per_copy)
            total = total + per_copy_loss(self.loss_name, out, yc, per_copy) * ((stop - start) / n)
        return total

    def __call__(self, params: Sequence[Tensor], X: Tensor, y: Tensor, per_copy: bool = False) -> Tensor:
        return self.data_loss(params, X, y, per_copy) + self.regularizer(params)

    @torch.no_grad()
    def evaluate(self, params: Sequence[Tensor], X: Tensor, y: Tensor, classification: bool
                 ) -> tuple[list[float] | None, list[float] | None]:
        """Mean data loss and accuracy of each copy over all rows of X (None for an empty set)."""
        n = int(X.shape[0])
        if n == 0:
            return None, None
        loss = torch.zeros(params[0].shape[0], dtype=torch.float64, device=X.device)
        correct = torch.zeros_like(loss)
        for start, stop in spans(n, self.chunk_size):
            out = self.forward(params, X[start:stop], False)
            loss += per_copy_loss(self.loss_name, out, y[start:stop]).double() * ((stop - start) / n)
            if classification:
                correct += per_copy_correct(out, y[start:stop]).double()
        return loss.tolist(), ((correct / n).tolist() if classification else None)


def stacked_step(objective: StackedObjective, rule: FunctionalRule, params: list[Tensor], state: dict[str, Any],
                 lrs: Tensor, X: Tensor, y: Tensor, per_copy: bool, clip_norm: float | None = None,
                 clip_value: float | None = None):
    """One update of every copy, each copy's gradient clipped by its own norm when ``clip_norm``
    or ``clip_value`` is set: returns (params, state, losses (K,), grad norms (K,), clip factors
    (K,) or None)."""
    leaves = [p.detach().requires_grad_(True) for p in params]
    losses = objective(leaves, X, y, per_copy)
    grads = list(torch.autograd.grad(losses.sum(), leaves))
    gnorms = global_norm(grads, copies=True)
    factors = None
    with torch.no_grad():
        if clip_norm is not None or clip_value is not None:
            grads, factors = clip_functional(grads, clip_norm, clip_value, copies=True)
        new, state = rule.update([p.detach() for p in leaves], grads, state, lrs)
    return new, state, losses.detach(), gnorms, factors


@dataclass
class CopyRecord:
    """The bookkeeping of one copy: its records, counters and, once it stops, its end state."""

    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    first_loss: float | None = None
    done: bool = False
    status: str = "completed"
    reason: str = "max_steps"
    step: int = 0
    samples: int = 0
    train_time: float = 0.0
    params: list[Tensor] | None = None
    clip_factors: list[float] = field(default_factory=list)


def stacked_train_loop(
    objective: StackedObjective,
    rule: FunctionalRule,
    params: list[Tensor],
    data: Any,
    schedules: Sequence[SampleSchedule],
    stop: StopRules,
    *,
    lr_table: Tensor,
    eval_every: int,
    log_every: int,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[CopyRecord]:
    """Train the K stacked copies (``params`` with a leading K) until every copy has stopped.

    ``lr_table`` (steps + 1, K) holds each copy's learning rate per step (the last row repeats);
    ``schedules`` one sample schedule per copy (all the same object when the copies share their
    sample order). Returns one CopyRecord per copy, whose ``params`` are its final parameters;
    the caller builds each copy's final record from them."""
    K = params[0].shape[0]
    X, y = data.X_train, data.y_train
    n = data.n_train
    classification = data.task_type == "classification"
    is_full = schedules[0].is_full
    shared_order = all(s is schedules[0] for s in schedules)
    copies = [CopyRecord() for _ in range(K)]
    state = rule.init(params)
    previous: list[Tensor] | None = None
    step, samples, train_time = 0, 0, 0.0

    def finish_copy(k: int, status: str, reason: str, at_step: int, snapshot: list[Tensor], used: int) -> None:
        c = copies[k]
        c.done, c.status, c.reason, c.step = True, status, reason, at_step
        c.samples, c.train_time = used, train_time / K
        c.params = [p[k].clone() for p in snapshot]

    def alive() -> list[int]:
        return [k for k in range(K) if not copies[k].done]

    while alive():
        reason = stop.spent(step, samples, n)
        if reason is not None:
            for k in alive():
                finish_copy(k, "completed", reason, step, params, samples)
            break
        if stop.time_budget_s is not None and train_time / K >= stop.time_budget_s:  # each copy's share
            for k in alive():
                finish_copy(k, "time_budget", "time_budget", step, params, samples)
            break
        evaluating = step % eval_every == 0
        if evaluating:
            test_loss, test_acc = objective.evaluate(params, data.X_test, data.y_test, classification)

            def tests(k: int) -> tuple[float | None, float | None]:
                return (test_loss[k] if test_loss else None, test_acc[k] if test_acc else None)

            eval_train = None
            if not is_full:
                with torch.no_grad():
                    eval_train = objective(params, X, y).double().tolist()
                for k in alive():
                    if copies[k].first_loss is None and math.isfinite(eval_train[k]):
                        copies[k].first_loss = eval_train[k]
                    if stop.loss_tol is not None and eval_train[k] <= stop.loss_tol:
                        copies[k].history.append(history_record(
                            step, samples / n, train_time / K, None, eval_train[k], None, float(lr_table[step, k]),
                            tests(k)))
                        finish_copy(k, "target_reached", "loss_tol", step, params, samples)
                if not alive():
                    break
        time_before = train_time
        t0 = time.perf_counter()
        if shared_order:
            idx = schedules[0].next_indices()
            rows = n if idx is None else int(idx.numel())
            Xb, yb = (X, y) if idx is None else (X[idx.to(X.device)], y[idx.to(X.device)])
            per_copy = False
        else:
            idxs = [s.next_indices() for s in schedules]
            rows = int(idxs[0].numel())
            stacked_idx = torch.stack(idxs).to(X.device)
            Xb, yb, per_copy = X[stacked_idx], y[stacked_idx], True
        lrs = lr_table[min(step, lr_table.shape[0] - 1)]
        new, new_state, losses_t, gnorms_t, factors_t = stacked_step(objective, rule, params, state, lrs, Xb, yb,
                                                                     per_copy, clip_norm, clip_value)
        losses, gnorms = losses_t.double().tolist(), gnorms_t.tolist()
        factors = factors_t.tolist() if factors_t is not None else None
        train_time += time.perf_counter() - t0
        used = samples + rows
        lr_values = lrs.tolist()
        logging = evaluating or step % log_every == 0
        for k in alive():
            c, loss, gnorm, lr = copies[k], losses[k], gnorms[k], lr_values[k]
            problem = guard_problem(loss, gnorm, lr, c.first_loss, stop.divergence_factor)
            if problem is not None:
                kind, detail = problem
                if previous is not None:
                    detail += f"; restored the last good parameters (step {step - 1})"
                c.events.append({"step": step, "kind": kind, "detail": detail + "; run stopped as diverged"})
                finish_copy(k, "diverged", kind, step - 1 if previous is not None else step,
                            previous if previous is not None else params, used)
                continue
            if c.first_loss is None:
                c.first_loss = loss
            reached = is_full and stop.loss_tol is not None and loss <= stop.loss_tol
            flat = is_full and stop.grad_tol is not None and gnorm <= stop.grad_tol
            clipped = factors is not None and not (reached or flat)  # a stopping step is not taken
            if clipped and factors[k] != 1.0:
                if not c.clip_factors:
                    c.events.append(clip_event(step, gnorm, gnorm * factors[k]))
                c.clip_factors.append(factors[k])
            if not (logging or reached or flat):
                continue  # most steps: nothing to record, so no record is built
            train_loss = loss if is_full else eval_train[k] if evaluating else None
            c.history.append(history_record(step, samples / n, time_before / K, loss, train_loss, gnorm, lr,
                                            tests(k) if evaluating else (None, None)))
            if clipped:
                c.history[-1]["clip_factor"] = factors[k]
            if reached:
                finish_copy(k, "target_reached", "loss_tol", step, params, used)
            elif flat:
                finish_copy(k, "stopped", "grad_tol", step, params, used)
        previous, params, state = params, new, new_state
        step, samples = step + 1, used
        if on_step is not None:
            on_step(step)
    return copies

"""Stacked sweeps: K copies of a small model trained at once as one stacked model.

Every parameter gets a leading dimension of K; copy k has its own learning rate (and, when the
copies differ in seed, its own initialisation and sample order); one forward and one backward
serve all copies. For small models, where per-step framework overhead rather than arithmetic is
the cost, K copies then cost about as much as one run.

Each copy is a lane of the one training loop: copy k's :class:`StackedLane` is its stepper,
and :func:`gdlab.engine.loop.train_lanes` advances the K loops in lockstep while
:class:`StackedSteps` computes each round's step of all copies at once. So copy k's stop
rules, guard (policy stop), clipping, history, events and final record are its own run's, by
the same code, and equal a separate run to float rounding (tests); a copy that diverges or
reaches its target stops there while the others go on. Training time is the stacked time
divided by K (each copy's share), and a time budget holds for that share.

Stackable models: the zoo's linear/logistic models, MLPs without BatchNorm or Dropout and
recurrent nets (RNN, LSTM, GRU; :func:`stackable`); their stacked forward pass is one GEMM for a
single-layer model whose input the copies share, and batched matrix products per layer (per time
step in a recurrent layer) otherwise (:class:`StackedForward`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gdlab.engine.chunks import tensor_rows
from gdlab.engine.objective import chunk_terms, correct, summed
from gdlab.engine.regimes import SampleSchedule
from gdlab.engine.steppers import Block, Clip, Stepper
from gdlab.models.spec import RECURRENT_FAMILIES
from gdlab.models.zoo import MLP, LinearModel, RecurrentNet
from gdlab.optim.functional import FunctionalRule, clip_functional, global_norm
from gdlab.optim.losses import LossFn
from gdlab.optim.regularization import penalty

STACKED_LOSSES = ("mse", "cross_entropy", "bce")  # the losses with reduction="none"


def stackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be stacked (one phrase), or None when it can."""
    if isinstance(model, RecurrentNet):
        rnn = model.rnn
        if not rnn.bias or rnn.bidirectional or rnn.proj_size or getattr(rnn, "nonlinearity", "tanh") != "tanh":
            return "only unidirectional recurrent layers with biases (tanh for RNN) stack"
        return None
    if not isinstance(model, (LinearModel, MLP)):
        return f"only the built-in linear, logistic, MLP and recurrent models stack, not {type(model).__name__}"
    for m in model.modules():
        if not isinstance(m, (LinearModel, MLP, nn.Sequential, nn.Linear)) and list(m.parameters()):
            return f"layer {type(m).__name__} has parameters the stacked forward does not know"
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            return "BatchNorm/Dropout layers do not stack"
    return None


def _recurrent_cell(cell: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One time step of K stacked cells from the input and hidden pre-activations ``gi``, ``gh``
    (K, B, gates * H): the formulas (and gate order) of torch's RNN (tanh), LSTM and GRU cells."""
    if cell == "rnn":
        return torch.tanh(gi + gh), None
    if cell == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    n = torch.tanh(i_n + torch.sigmoid(i_r + h_r) * h_n)
    return (h - n) * torch.sigmoid(i_z + h_z) + n, None


class StackedForward:
    """The forward pass of K copies of a LinearModel, MLP or RecurrentNet: ``(params, X) -> (B, K,
    out)``, params in ``model.parameters()`` order with a leading K; X (B, ...) shared by every
    copy or (K, B, ...) one batch per copy. The output is batch-major: row b of copy k is
    ``out[b, k]``.

    Layers are batched matrix products over the copies, except a single-layer model with a shared
    X: there the copies are one (B, in) x (in, out*K) GEMM, because batched products of small
    matrices cost up to 20x a GEMM of the same size on some CPUs (645 against 31 us for 32 copies
    of the breast_cancer logistic regression, AMD EPYC); in an MLP's first layer that GEMM measured
    15% slower (digits 64-128-10: its output must be copied to (K, B, hidden)). A recurrent layer is
    its cell's formulas over time, one batched product per time step (8 copies of an 8-unit GRU on
    a 20-step sequence: 1.6x the time of one ``nn.GRU`` step)."""

    def __init__(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        self.steps: list[tuple[str, Any]] = []
        self.recurrent = isinstance(model, RecurrentNet)
        if self.recurrent:
            cell = type(model.rnn).__name__.lower()
            for layer in range(model.rnn.num_layers):
                self.steps.append((cell, tuple(names.index(f"rnn.{kind}_l{layer}")
                                               for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))))
            self.steps.append(("last", None))
            modules, prefix = [model.head], "head"
        elif isinstance(model, LinearModel):
            modules, prefix = [model.linear], "linear"
        else:
            modules, prefix = list(model.layers), "layers"
        for i, m in enumerate(modules):
            if isinstance(m, nn.Linear):
                base = f"{prefix}.{i}" if isinstance(model, MLP) else prefix
                w = names.index(f"{base}.weight")
                b = names.index(f"{base}.bias") if m.bias is not None else None
                self.steps.append(("linear", (w, b)))
            else:
                self.steps.append(("elementwise", m))
        self.single_layer = not self.recurrent and sum(kind == "linear" for kind, _ in self.steps) == 1

    @staticmethod
    def _recurrent(cell: str, indices: tuple[int, ...], params: Sequence[Tensor], h_seq: Tensor) -> Tensor:
        """A recurrent layer over the sequence ``h_seq`` (K or 1, B, T, F) -> (K, B, T, H)."""
        W_ih, W_hh, b_ih, b_hh = (params[i] for i in indices)
        K, H = W_hh.shape[0], W_hh.shape[2]
        gi = torch.matmul(h_seq, W_ih.transpose(1, 2).unsqueeze(1)) + b_ih[:, None, None, :]  # (K, B, T, gates*H)
        W_hh_t, b_hh_rows = W_hh.transpose(1, 2), b_hh.unsqueeze(1)  # once, not once per time step
        h = gi.new_zeros(K, gi.shape[1], H)
        c = torch.zeros_like(h) if cell == "lstm" else None
        outputs = []
        for t in range(gi.shape[2]):
            h, c = _recurrent_cell(cell, gi[:, :, t], torch.baddbmm(b_hh_rows, h, W_hh_t), h, c)
            outputs.append(h)
        return torch.stack(outputs, dim=2)

    def __call__(self, params: Sequence[Tensor], X: Tensor, per_copy: bool) -> Tensor:
        if self.recurrent:
            h = X if per_copy else X.unsqueeze(0)  # (K or 1, B, T, F)
            copies_first = True
        else:
            h = X.flatten(2) if per_copy else X.flatten(1)
            copies_first = False  # h is (K, B, f) when True
        for kind, what in self.steps:
            if kind in RECURRENT_FAMILIES:
                h = self._recurrent(kind, what, params, h)
                continue
            if kind == "last":
                h = h[:, :, -1]  # the last time step's output: (K, B, H)
                continue
            if kind != "linear":
                h = what(h)  # the MLP's activations are elementwise: any layout
                continue
            w, b = what
            W = params[w]
            K, out = W.shape[0], W.shape[1]
            if h.dim() == 2 and self.single_layer:
                # columns in (output, copy) order: the (B, out, K) product is the layout a loss over
                # the copies reads without a copy (torch's cross-entropy takes (B, C, K)); returned
                # as its (B, K, out) view. For one output that order is W's own memory order, and
                # plain views (no transposes: fewer ops and autograd nodes a step) do
                if out == 1:
                    flat, bias = W.reshape(K, -1).T, None if b is None else params[b].reshape(K)
                else:
                    flat = W.transpose(0, 1).reshape(out * K, -1).T
                    bias = None if b is None else params[b].T.reshape(out * K)
                prod = h @ flat if bias is None else torch.addmm(bias, h, flat)
                h = prod.unsqueeze(-1) if out == 1 else prod.view(h.shape[0], out, K).transpose(1, 2)
                continue
            h = torch.matmul(h, W.transpose(1, 2))  # (B, in) broadcast or (K, B, in) -> (K, B, out)
            copies_first = True
            if b is not None:
                h = h + params[b].unsqueeze(1)
        return h.transpose(0, 1) if copies_first else h


def per_copy_loss(loss_fn: LossFn, out: Tensor, y: Tensor, per_copy: bool = False) -> Tensor:
    """The mean loss of each copy, (K,), for batch-major stacked outputs ``out`` (B, K, C) and
    targets ``y``, (B, ...) shared by the copies or (K, B, ...) one per copy (``per_copy``): the
    loss's own ``copies`` layout (:mod:`gdlab.optim.losses`), which broadcasts shared targets."""
    return loss_fn(out, y.transpose(0, 1) if per_copy else y.unsqueeze(1), copies=True)


@dataclass
class StackedObjective:
    """Per-copy objectives ``L_k = (1/N) sum_i l(f_k(x_i), y_i) + R(theta_k)``, (K,), by the chunk
    loop of :mod:`gdlab.engine.objective`."""

    forward: StackedForward
    loss_fn: LossFn
    penalised: list[bool]
    l1: float = 0.0
    l2: float = 0.0
    chunk_size: int | None = None

    def regularizer(self, params: Sequence[Tensor]) -> Tensor | float:
        return penalty([p for p, pen in zip(params, self.penalised) if pen], self.l1, self.l2, copies=True)

    def _terms(self, params: Sequence[Tensor], X: Tensor, y: Tensor, per_copy: bool):
        return chunk_terms(lambda Xc: self.forward(params, Xc, per_copy),
                           lambda out, yc: per_copy_loss(self.loss_fn, out, yc, per_copy),
                           tensor_rows(X, y, self.chunk_size, dim=1 if per_copy else 0))

    def __call__(self, params: Sequence[Tensor], X: Tensor, y: Tensor, per_copy: bool = False) -> Tensor:
        return summed(self._terms(params, X, y, per_copy), self.regularizer(params))

    @torch.no_grad()
    def evaluate(self, params: Sequence[Tensor], X: Tensor, y: Tensor, classification: bool
                 ) -> tuple[list[float] | None, list[float] | None]:
        """Mean data loss and accuracy of each copy over all rows of X (None for an empty set)."""
        n = int(X.shape[0])
        if n == 0:
            return None, None
        loss = torch.zeros(params[0].shape[0], dtype=torch.float64, device=X.device)
        hits = torch.zeros_like(loss)
        for chunk_loss, out, yc in self._terms(params, X, y, False):
            loss += chunk_loss.double()
            if classification:
                hits += correct(out, yc)
        return loss.tolist(), ((hits / n).tolist() if classification else None)


def _losses_and_grads(objective: StackedObjective, params: Sequence[Tensor], X: Tensor, y: Tensor, per_copy: bool
                      ) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    """Each copy's objective and its gradient: (leaves, losses (K,), grads, grad norms (K,))."""
    leaves = [p.detach().requires_grad_(True) for p in params]
    losses = objective(leaves, X, y, per_copy)
    grads = list(torch.autograd.grad(losses, leaves, torch.ones_like(losses)))  # d(sum of L_k): each copy's own
    return leaves, losses, grads, global_norm(grads, copies=True)


def stacked_step(objective: StackedObjective, rule: FunctionalRule, params: list[Tensor], state: dict[str, Any],
                 lrs: Tensor, X: Tensor, y: Tensor, per_copy: bool, clip_norm: float | None = None,
                 clip_value: float | None = None):
    """One update of every copy, each copy's gradient clipped by its own norm when ``clip_norm``
    or ``clip_value`` is set: returns (params, state, losses (K,), grad norms (K,), clip factors
    (K,) or None)."""
    leaves, losses, grads, gnorms = _losses_and_grads(objective, params, X, y, per_copy)
    factors = None
    with torch.no_grad():
        if clip_norm is not None or clip_value is not None:
            grads, factors = clip_functional(grads, clip_norm, clip_value, copies=True)
        new, state = rule.update(leaves, grads, state, lrs)  # no grad mode: the results record no graph
    return new, state, losses.detach(), gnorms, factors


class StackedSteps:
    """The computation K lanes share: each round, ``count`` stacked steps of every copy (:meth:`step`,
    computed once, when the first lane asks; a lane asks for a block of ``block`` steps where its
    loop allows, as the compiled stepper does, so the K loops' bookkeeping runs once per block),
    committed for all of them by :meth:`advance` at the round's end. ``params`` carry a leading K;
    ``lr_table`` (steps + 1, K) holds each copy's learning rate per step (the last row repeats);
    ``schedules`` one sample schedule per copy (all the same object when the copies share their
    sample order)."""

    def __init__(self, objective: StackedObjective, rule: FunctionalRule, params: list[Tensor], data: Any,
                 schedules: Sequence[SampleSchedule], lr_table: Tensor, *, clip_norm: float | None = None,
                 clip_value: float | None = None, block: int = 1) -> None:
        self.objective, self.rule, self.data, self.block = objective, rule, data, block
        self.X, self.y = data.X_train, data.y_train
        self._measured: dict[str, list[Any]] = {}
        self.schedules, self.lr_table = list(schedules), lr_table
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.shared_order = all(s is self.schedules[0] for s in self.schedules)
        self.current, self.state = params, rule.init(params)
        self.previous: list[Tensor] | None = None
        self.round = 0  # the step the round starts at
        self._pending: tuple[Any, ...] | None = None

    def lrs(self, step: int) -> Tensor:
        """Each copy's learning rate at ``step`` (K,)."""
        return self.lr_table[min(step, self.lr_table.shape[0] - 1)]

    def _batch(self) -> tuple[Tensor, Tensor, bool, int]:
        X, y = self.X, self.y
        if self.shared_order:
            idx = self.schedules[0].next_indices()
            if idx is None:
                return X, y, False, int(X.shape[0])
            return X[idx.to(X.device)], y[idx.to(X.device)], False, int(idx.numel())
        stacked_idx = torch.stack([s.next_indices() for s in self.schedules]).to(X.device)
        return X[stacked_idx], y[stacked_idx], True, int(stacked_idx.shape[1])

    def step(self, count: int = 1) -> tuple[list[list[float]], list[list[float]], list[list[float]],
                                            list[list[float]] | None, list[int], float]:
        """This round's ``count`` steps of every copy: per copy (each a list over the ``count``
        steps) the losses, grad norms, lrs and clip factors (None without clipping), then the
        rows of each step and the seconds the block took."""
        if self._pending is None:
            t0 = time.perf_counter()
            last = self.lr_table.shape[0] - 1
            lr_rows = self.lr_table[[min(self.round + i, last) for i in range(count)]]  # (count, K)
            params, state, trail, rows, measured = self.current, self.state, [], [], []
            for i in range(count):
                Xb, yb, per_copy, n_rows = self._batch()
                params, state, *values = stacked_step(self.objective, self.rule, params, state, lr_rows[i], Xb, yb,
                                                      per_copy, self.clip_norm, self.clip_value)
                trail.append(params)
                rows.append(n_rows)
                measured.append(values)  # loss, grad norm, clip factor: (K,) each
            # one conversion per block, not per step: (count, K) -> K lists of count
            losses, gnorms, factors = zip(*measured)
            per_copy = [torch.stack(losses).double().T.tolist(), torch.stack(gnorms).T.tolist(), lr_rows.T.tolist(),
                        None if factors[0] is None else torch.stack(factors).T.tolist()]
            self._pending = (state, trail, (*per_copy, rows), time.perf_counter() - t0)
        state, trail, results, seconds = self._pending
        if len(trail) != count:
            raise RuntimeError(f"stacked lanes out of step: {count} steps asked, {len(trail)} computed")
        return (*results, seconds)

    def params_at(self, offset: int) -> list[Tensor] | None:
        """The copies' parameters ``offset`` steps into this round (-1: one step before it, None
        when there is none)."""
        trail = self._pending[1] if self._pending is not None else []
        return [self.previous, self.current, *trail][offset + 1]

    def measure(self, what: str) -> list[Any]:
        """Each copy's test (loss, accuracy) (``"test"``), full training objective (``"train"``)
        or final record's measurements (``"final"``, as :func:`gdlab.engine.loop.final_record`)
        at the round's parameters, computed once per round for all copies."""
        if what not in self._measured:
            self._measured[what] = self._measure(what)
        return self._measured[what]

    def _measure(self, what: str) -> list[Any]:
        d, current = self.data, self.current
        classification = d.task_type == "classification"
        if what == "train":
            with torch.no_grad():
                return self.objective(current, self.X, self.y).double().tolist()
        if what == "test":
            with torch.no_grad():
                losses, accs = self.objective.evaluate(current, d.X_test, d.y_test, classification)
            return [(None if losses is None else losses[k], None if accs is None else accs[k])
                    for k in range(current[0].shape[0])]
        _, train, _, gnorms = _losses_and_grads(self.objective, current, self.X, self.y, False)
        with torch.no_grad():
            accs = self.objective.evaluate(current, self.X, self.y, True)[1] if classification else None
        return [{"train_loss": loss, "train_accuracy": None if accs is None else accs[k], "grad_norm": gnorm,
                 "test_loss": test[0], "test_accuracy": test[1]}
                for k, (loss, gnorm, test) in enumerate(zip(train.detach().double().tolist(), gnorms.tolist(),
                                                            self.measure("test")))]

    def advance(self) -> None:
        """Commit the round's steps for every copy (a lane that stopped no longer reads its slot)."""
        self._measured = {}
        if self._pending is not None:
            self.state, trail, _, _ = self._pending
            self.previous, self.current = ([self.current, *trail])[-2:]
            self._pending = None
            self.round += len(trail)


class StackedLane(Stepper):
    """Copy ``k`` of a :class:`StackedSteps` as a stepper of the one loop, training ``model`` (a
    model of the copies' architecture that holds copy k's parameters for measurements and the
    final record). Its training time is its share of each stacked block. Lanes stay in lockstep:
    the guard policy is stop, under which a lane that goes back stops there."""

    name = "stacked"

    def __init__(self, shared: StackedSteps, k: int, model: nn.Module) -> None:
        self.shared, self.k = shared, k
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.full = shared.schedules[k].is_full
        self.max_block, self.max_rows = shared.block, shared.schedules[k].batch_size
        self.clipping = shared.clip_norm is not None or shared.clip_value is not None
        self._count, self._accepted = 1, 0
        self._final: list[Tensor] | None = None  # where a lane that stops inside a round ends

    def run(self, step: int, count: int) -> Block:
        losses, gnorms, lrs, _, rows, seconds = self.shared.step(count)
        k = self.k
        self._count = count
        return Block(losses[k], gnorms[k], lrs[k], rows, seconds / len(losses))

    def accept(self, k: int, step: int) -> tuple[list[Clip | None], float]:
        self._accepted = k
        if k < self._count:  # the lane stops in this round (a tolerance rule or the guard)
            self._final = self.shared.params_at(k)
        if k == 0 or not self.clipping:
            return [None] * k, 0.0
        _, gnorms, _, factors, _, _ = self.shared.step(self._count)
        return [Clip.scaled(f, g) for f, g in zip(factors[self.k][:k], gnorms[self.k][:k])], 0.0

    def back(self) -> int | None:
        self._final = self.shared.params_at(self._accepted - 1)
        return None if self._final is None else self.shared.round + self._accepted - 1

    def scale_lr(self, factor: float) -> None:
        raise NotImplementedError("stacked lanes run under guard policy stop")

    def lr(self, step: int) -> float:
        return float(self.shared.lrs(step)[self.k])

    def measure(self, what: str, default: Callable[[], Any]) -> Any:
        if what == "final" and self._final is not None:  # stopped inside a round, on parameters of its own
            return default()
        return self.shared.measure(what)[self.k]

    @torch.no_grad()
    def sync(self) -> None:
        for p, stacked in zip(self.params, self._final if self._final is not None else self.shared.current):
            p.copy_(stacked[self.k])

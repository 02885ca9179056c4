"""Update rules as pure functions of (parameters, gradients, state, lr): the registry's torch.optim
rules rewritten without in-place mutation, for the compiled fast path and stacked sweeps.

Each rule follows its torch.optim counterpart's single-tensor implementation (torch 2.x) formula
for formula, so a functional run equals the torch.optim run to float rounding (tests compare them
step by step). ``lr`` is a 0-dim tensor, or a (K,) tensor when the parameters carry a leading
dimension of K stacked copies (each copy then gets its own learning rate). The step counter lives
in the state as a 0-dim float tensor so that compiled code does not specialise on it.

Why not torch.optim's own step: ``torch.compile`` of ``torch.optim.SGD.step`` beside a compiled
loss took 11.4x gdlab's compiled block on linreg and 1.67x on the digits MLP
(``benchmarks/fastpath.py``, "compiled torch.optim / gdlab compiled"): backward stays outside the
graph and the step is one more graph per step, where here a whole block of steps, update
included, is one graph. And stacked copies need a learning rate per copy, which torch.optim's
step (a float ``lr`` per group) cannot take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gdlab.errors import GdlabError
from gdlab.optim.registry import OPTIMIZERS, validate_hyperparameters

State = dict[str, Any]
Params = list[Tensor]


def _per_param(lr: Tensor, p: Tensor) -> Tensor:
    """``lr`` broadcast against ``p``: a scalar as is, a (K,) vector as (K, 1, ..., 1)."""
    if lr.dim() == 0:
        return lr
    return lr.reshape(lr.shape + (1,) * (p.dim() - lr.dim()))


def _decayed(grads: Params, params: Params, weight_decay: float) -> Params:
    """torch's coupled weight decay: g + wd * theta."""
    if not weight_decay:
        return list(grads)
    return [g + weight_decay * p for g, p in zip(grads, params)]


@dataclass(frozen=True)
class FunctionalRule:
    """An update rule: ``init(params) -> state`` and
    ``update(params, grads, state, lr) -> (new_params, new_state)``."""

    name: str
    hyperparameters: dict[str, Any]
    init: Callable[[Params], State]
    update: Callable[[Params, Params, State, Tensor], tuple[Params, State]]


def _zeros(params: Params, value: float = 0.0) -> Params:
    return [torch.full_like(p, value) for p in params]


def _step_counter(params: Params) -> Tensor:
    ref = params[0]
    dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.zeros((), dtype=dtype, device=ref.device)


def _sgd(h: dict[str, Any]) -> FunctionalRule:
    momentum, dampening = h.get("momentum", 0.0), h.get("dampening", 0.0)
    nesterov, weight_decay = h.get("nesterov", False), h.get("weight_decay", 0.0)

    def init(params: Params) -> State:  # the step count only tells momentum's first step
        return {"step": _step_counter(params), "buf": _zeros(params)} if momentum else {}

    def update(params: Params, grads: Params, state: State, lr: Tensor) -> tuple[Params, State]:
        grads = _decayed(grads, params, weight_decay)
        if momentum:
            first = state["step"] == 0
            # torch starts the buffer at the first gradient (no dampening on that step)
            bufs = [torch.where(first, g, b * momentum + g * (1 - dampening)) for b, g in zip(state["buf"], grads)]
            grads = [g + momentum * b for g, b in zip(grads, bufs)] if nesterov else bufs
            state = {"step": state["step"] + 1, "buf": bufs}
        new = [torch.addcmul(p, _per_param(lr, p), g, value=-1) for p, g in zip(params, grads)]  # p - lr * g, one op
        return new, state

    return FunctionalRule("sgd", h, init, update)


def _adam(h: dict[str, Any], decoupled: bool) -> FunctionalRule:
    beta1, beta2 = h["betas"]
    eps, weight_decay, amsgrad = h["eps"], h["weight_decay"], h["amsgrad"]

    def init(params: Params) -> State:
        return {"step": _step_counter(params), "exp_avg": _zeros(params), "exp_avg_sq": _zeros(params),
                "max_exp_avg_sq": _zeros(params) if amsgrad else []}

    def update(params: Params, grads: Params, state: State, lr: Tensor) -> tuple[Params, State]:
        step = state["step"] + 1
        if decoupled:
            params = [p * (1 - _per_param(lr, p) * weight_decay) for p in params]
        else:
            grads = _decayed(grads, params, weight_decay)
        m = [torch.lerp(a, g, 1 - beta1) for a, g in zip(state["exp_avg"], grads)]
        v = [s * beta2 + g * g * (1 - beta2) for s, g in zip(state["exp_avg_sq"], grads)]
        bc1 = 1 - beta1 ** step
        bc2_sqrt = (1 - beta2 ** step).sqrt()
        vmax = [torch.maximum(a, b) for a, b in zip(state["max_exp_avg_sq"], v)] if amsgrad else []
        second = vmax if amsgrad else v
        new = [p - (_per_param(lr, p) / bc1) * mi / (si.sqrt() / bc2_sqrt + eps)
               for p, mi, si in zip(params, m, second)]
        return new, {"step": step, "exp_avg": m, "exp_avg_sq": v, "max_exp_avg_sq": vmax}

    return FunctionalRule("adamw" if decoupled else "adam", h, init, update)


def _rmsprop(h: dict[str, Any]) -> FunctionalRule:
    alpha, eps, momentum = h["alpha"], h["eps"], h["momentum"]
    centered, weight_decay = h["centered"], h["weight_decay"]

    def init(params: Params) -> State:
        return {"step": _step_counter(params), "square_avg": _zeros(params),
                "grad_avg": _zeros(params) if centered else [], "buf": _zeros(params) if momentum else []}

    def update(params: Params, grads: Params, state: State, lr: Tensor) -> tuple[Params, State]:
        grads = _decayed(grads, params, weight_decay)
        sq = [s * alpha + g * g * (1 - alpha) for s, g in zip(state["square_avg"], grads)]
        gavg = [torch.lerp(a, g, 1 - alpha) for a, g in zip(state["grad_avg"], grads)] if centered else []
        if centered:
            avg = [(s - a * a).sqrt() + eps for s, a in zip(sq, gavg)]
        else:
            avg = [s.sqrt() + eps for s in sq]
        bufs = state["buf"]
        if momentum:
            bufs = [b * momentum + g / a for b, g, a in zip(bufs, grads, avg)]
            new = [p - _per_param(lr, p) * b for p, b in zip(params, bufs)]
        else:
            new = [p - _per_param(lr, p) * g / a for p, g, a in zip(params, grads, avg)]
        return new, {"step": state["step"] + 1, "square_avg": sq, "grad_avg": gavg, "buf": bufs}

    return FunctionalRule("rmsprop", h, init, update)


def _adagrad(h: dict[str, Any]) -> FunctionalRule:
    lr_decay, eps = h["lr_decay"], h["eps"]
    initial, weight_decay = h["initial_accumulator_value"], h["weight_decay"]

    def init(params: Params) -> State:
        return {"step": _step_counter(params), "sum": _zeros(params, initial)}

    def update(params: Params, grads: Params, state: State, lr: Tensor) -> tuple[Params, State]:
        step = state["step"] + 1
        grads = _decayed(grads, params, weight_decay)
        clr = lr / (1 + (step - 1) * lr_decay)
        sums = [s + g * g for s, g in zip(state["sum"], grads)]
        new = [p - _per_param(clr, p) * g / (s.sqrt() + eps) for p, g, s in zip(params, grads, sums)]
        return new, {"step": step, "sum": sums}

    return FunctionalRule("adagrad", h, init, update)


FUNCTIONAL_RULES = ("gd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")


def functional_rule(name: str, lr: float = 1.0, **hparams: Any) -> FunctionalRule:
    """The functional form of registry optimizer ``name`` with ``hparams`` (validated and
    defaulted exactly as :func:`gdlab.optim.build_optimizer` does). Raises GdlabError for a rule
    with no functional form (the line search, whose step needs extra loss evaluations)."""
    h = validate_hyperparameters(name, lr, **hparams)
    h.pop("lr")
    if name not in FUNCTIONAL_RULES:
        raise GdlabError(f"optimizer '{name}' has no functional form (needed by the compiled fast path and "
                         f"stacked sweeps); those support {', '.join(FUNCTIONAL_RULES)}")
    h.update(OPTIMIZERS[name].fixed)
    if name in ("gd", "momentum", "nesterov"):
        return _sgd(h)
    if name in ("adam", "adamw"):
        return _adam(h, decoupled=name == "adamw")
    if name == "rmsprop":
        return _rmsprop(h)
    return _adagrad(h)


def clip_functional(grads: Params, max_norm: float | None, max_value: float | None,
                    copies: bool = False) -> tuple[Params, Tensor]:
    """Clip like :func:`gdlab.optim.clipping.clip_gradients` (value clamp, then global-norm scaling
    only above ``max_norm``), without mutation; returns the gradients and ``norm_after /
    norm_before`` as a tensor (1 when nothing changed). With ``copies`` the gradients have a
    leading dimension of K stacked copies, each clipped by its own norm (factors (K,))."""
    before = global_norm(grads, copies)
    if max_value is not None:
        grads = [g.clamp(-max_value, max_value) for g in grads]
    if max_norm is not None:
        mid = global_norm(grads, copies)
        scale = torch.where(mid > max_norm, max_norm / (mid + 1e-6), torch.ones_like(mid))
        grads = [g * (scale.reshape(-1, *[1] * (g.dim() - 1)) if copies else scale).to(g.dtype) for g in grads]
    after = global_norm(grads, copies)
    return grads, torch.where(before > 0, after / before, torch.ones_like(before))


def global_norm(tensors: Sequence[Tensor], copies: bool = False) -> Tensor:
    """The Euclidean norm of all ``tensors`` together, in float64 (0-dim); with ``copies``, of
    each stacked copy (the tensors' leading dimension), (K,)."""
    if copies:  # all of a copy's entries in one row: one norm over (K, total size)
        return torch.linalg.vector_norm(torch.cat([t.flatten(1) for t in tensors], dim=1), dim=1,
                                        dtype=torch.float64)
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]).norm()

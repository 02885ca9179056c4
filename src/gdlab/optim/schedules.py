"""Learning-rate schedules, written as one short string and built on torch.optim.lr_scheduler.

Syntax (the scheduler is stepped once per update; the lr at step 0 is the first value):

- ``constant``: no scheduler, the optimizer's lr throughout.
- ``step:EVERY:GAMMA``: lr * GAMMA ** (t // EVERY) (torch ``StepLR``).
- ``exp:GAMMA``: lr * GAMMA ** t (torch ``ExponentialLR``).
- ``cosine[:T[:MIN_FACTOR]]``: eta_min + (lr - eta_min) * (1 + cos(pi * t / T)) / 2 with
  eta_min = MIN_FACTOR * lr (torch ``CosineAnnealingLR``); T defaults to the step budget.
  Past T the torch scheduler keeps following the cosine, so the lr rises again.
- ``warmup:W[+REST]``: lr * (1/W + (1 - 1/W) * t / W) for t < W (torch ``LinearLR``), then REST
  (``constant``, ``step``, ``exp`` or ``cosine``) counted from step W (torch ``SequentialLR``).
  A cosine without T after a warmup spans the rest of the budget, T = budget - W.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LinearLR, LRScheduler,
                                      SequentialLR, StepLR)

from gdlab.errors import GdlabError, unknown_name
from gdlab.optim.linesearch import ArmijoLineSearch

SCHEDULES: dict[str, str] = {
    "constant": "constant learning rate (constant)",
    "step": "multiply the lr by GAMMA every EVERY steps (step:EVERY:GAMMA; torch StepLR)",
    "exp": "multiply the lr by GAMMA every step (exp:GAMMA; torch ExponentialLR)",
    "cosine": "cosine decay from lr to MIN_FACTOR*lr over T steps, T defaults to the step budget "
              "(cosine[:T[:MIN_FACTOR]]; torch CosineAnnealingLR)",
    "warmup": "linear warmup from lr/W to lr over W steps, then REST, e.g. warmup:10+cosine "
              "(warmup:W[+REST]; torch LinearLR + SequentialLR)",
}

_SYNTAX = {"constant": "constant", "step": "step:EVERY:GAMMA", "exp": "exp:GAMMA",
           "cosine": "cosine[:T[:MIN_FACTOR]]", "warmup": "warmup:W[+REST]"}
_ARITY = {"constant": (0, 0), "step": (2, 2), "exp": (1, 1), "cosine": (0, 2), "warmup": (1, 1)}

Phase = tuple[str, tuple[float, ...]]


def _number(token: str, text: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise GdlabError(f"schedule '{text}': '{token}' is not a number; "
                         "see `gdlab list` for the schedule syntax") from None


def _check_integer(value: float, what: str, text: str) -> None:
    if not (math.isfinite(value) and value.is_integer() and value >= 1):
        raise GdlabError(f"schedule '{text}': {what} must be an integer >= 1, got {value:g}")


def _check_gamma(value: float, text: str) -> None:
    if not 0 < value <= 1:
        raise GdlabError(f"schedule '{text}': GAMMA must be in (0, 1], got {value:g}")


def _parse_phase(part: str, text: str) -> Phase:
    name, *tokens = [token.strip() for token in part.split(":")]
    name = name.lower()
    if name not in SCHEDULES:
        raise unknown_name("schedule", name, SCHEDULES)
    low, high = _ARITY[name]
    if not low <= len(tokens) <= high:
        count = f"{low}" if low == high else f"{low} to {high}"
        raise GdlabError(f"schedule '{text}': {name} takes {count} value{'' if high == 1 else 's'}, "
                         f"got {len(tokens)}; write {_SYNTAX[name]}")
    values = tuple(_number(token, text) for token in tokens)
    if name == "step":
        _check_integer(values[0], "EVERY", text)
        _check_gamma(values[1], text)
    elif name == "exp":
        _check_gamma(values[0], text)
    elif name == "cosine":
        if values:
            _check_integer(values[0], "T", text)
        if len(values) == 2 and not 0 <= values[1] < 1:
            raise GdlabError(f"schedule '{text}': MIN_FACTOR must be in [0, 1), got {values[1]:g}")
    elif name == "warmup":
        _check_integer(values[0], "W", text)
    return name, values


def parse_schedule(text: str) -> list[Phase]:
    """Parse and validate a schedule string into phases ``[(name, values), ...]``.

    ``"warmup:5+cosine:100:0.1"`` -> ``[("warmup", (5.0,)), ("cosine", (100.0, 0.1))]``. Only a warmup may be
    followed (once) by ``+REST``; REST is not itself a warmup. Raises GdlabError on bad syntax or values.
    """
    if not isinstance(text, str) or not text.strip():
        raise GdlabError("schedule must be a non-empty string such as 'cosine' or 'warmup:10+exp:0.99', "
                         f"got {text!r}")
    parts = [part.strip() for part in text.strip().split("+")]
    if len(parts) > 2:
        raise GdlabError(f"schedule '{text}': use at most one '+', as in warmup:W+REST")
    if not all(parts):
        raise GdlabError(f"schedule '{text}': empty part around '+'; write warmup:W+REST")
    phases = [_parse_phase(part, text) for part in parts]
    if len(phases) == 2:
        if phases[0][0] != "warmup":
            raise GdlabError(f"schedule '{text}': only a warmup can come before '+', as in warmup:W+REST")
        if phases[1][0] == "warmup":
            raise GdlabError(f"schedule '{text}': REST after warmup:W+ cannot be another warmup")
    return phases


def _base_lr_for_eta_min(optimizer: torch.optim.Optimizer, min_factor: float, text: str) -> float:
    lrs = {float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups}
    if len(lrs) > 1 and min_factor > 0:
        # CosineAnnealingLR takes one eta_min for all groups, so MIN_FACTOR*lr has no single value.
        raise GdlabError(f"schedule '{text}': MIN_FACTOR > 0 needs one lr for all parameter groups; "
                         "use MIN_FACTOR 0")
    return lrs.pop()


def _phase_scheduler(phase: Phase, optimizer: torch.optim.Optimizer, horizon: int | None, text: str,
                     after_warmup: int = 0) -> LRScheduler | None:
    name, values = phase
    if name == "constant":
        return None
    if name == "step":
        return StepLR(optimizer, step_size=int(values[0]), gamma=values[1])
    if name == "exp":
        return ExponentialLR(optimizer, gamma=values[0])
    if name == "cosine":
        if values:
            t_max = int(values[0])
        elif horizon is None:
            raise GdlabError(f"schedule '{text}': cosine needs a length; give cosine:T or a step budget")
        else:
            t_max = horizon - after_warmup
            if t_max < 1:
                raise GdlabError(f"schedule '{text}': the step budget {horizon} leaves no steps for cosine "
                                 f"after warmup:{after_warmup}; give cosine:T or a larger budget")
        min_factor = values[1] if len(values) == 2 else 0.0
        eta_min = min_factor * _base_lr_for_eta_min(optimizer, min_factor, text)
        return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
    raise AssertionError(f"unhandled schedule phase {name}")


def build_scheduler(text: str | None, optimizer: torch.optim.Optimizer,
                    total_steps: int | None) -> LRScheduler | None:
    """Build the torch scheduler for ``text`` on ``optimizer`` (None for a constant lr). Call
    ``scheduler.step()`` once after each ``optimizer.step()``. ``total_steps`` is the step budget (updates),
    used by a cosine without T; None when the run has no step budget."""
    if text is None:
        return None
    phases = parse_schedule(text)
    if phases == [("constant", ())]:
        return None
    budget_ok = isinstance(total_steps, Integral) and not isinstance(total_steps, bool) and total_steps >= 1
    if total_steps is not None and not budget_ok:
        raise GdlabError(f"step budget for schedule '{text}' must be an integer >= 1, got {total_steps!r}")
    if isinstance(optimizer, ArmijoLineSearch):
        raise GdlabError(f"schedule '{text}' does not apply to the line search, which picks its own step; "
                         "drop the schedule or choose another optimizer")
    if phases[0][0] != "warmup":
        return _phase_scheduler(phases[0], optimizer, total_steps, text)
    warmup = int(phases[0][1][0])
    # The rest is built first so that its errors (e.g. no budget for cosine) are raised before
    # LinearLR has lowered the optimizer's lr to lr/W.
    rest = _phase_scheduler(phases[1], optimizer, total_steps, text, warmup) if len(phases) == 2 else None
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    if rest is None:
        return ramp
    return SequentialLR(optimizer, schedulers=[ramp, rest], milestones=[warmup])


def schedule_lrs(text: str | None, base_lr: float, steps: int, total_steps: int | None = None) -> list[float]:
    """The lr used at steps 0..steps-1 under schedule ``text`` starting from ``base_lr``. Built by stepping a
    real scheduler on a one-parameter SGD optimizer. ``total_steps`` is the step budget as in
    :func:`build_scheduler` (None: no budget, so a cosine needs its T)."""
    valid_lr = isinstance(base_lr, Real) and not isinstance(base_lr, bool) and math.isfinite(base_lr)
    if not (valid_lr and base_lr > 0):
        raise GdlabError(f"base lr must be a finite number > 0, got {base_lr!r}")
    if not (isinstance(steps, Integral) and not isinstance(steps, bool) and steps >= 0):
        raise GdlabError(f"steps must be an integer >= 0, got {steps!r}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(base_lr))
    scheduler = build_scheduler(text, optimizer, total_steps)
    lrs = []
    for _ in range(steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        # A step with no gradients changes nothing but keeps torch's step-order check quiet.
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs

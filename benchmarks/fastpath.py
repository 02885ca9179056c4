"""Per-step overhead of full-batch training: the compiled fast path against hand-written loops.

Cases (both float32, full-batch gradient descent, constant learning rate):

* linreg: linear regression, 100 training rows, 1 feature (gdlab's ``linreg`` task), 1000 steps
  of plain GD at lr 0.1 (``--quick``: 200 steps);
* digits MLP 64-128-10 (relu, cross-entropy, 1437 training rows), 500 steps of GD at lr 0.5
  (``--quick``: 50 steps).

Contenders, timed in the same process as medians over ``--repeats`` rounds after a warm-up
round (every round runs each contender once, so load changes hit them alike):

* numpy (linreg only): the GD loop in NumPy float64, gradient written by hand;
* autograd loop: ``opt.zero_grad(); loss = mse(model(X), y); loss.backward(); opt.step();
  loss.item()`` with ``torch.optim.SGD`` - the same steps gdlab takes, no bookkeeping;
* gdlab eager: ``gdlab.run.run`` with ``compile: off`` (the torch.optim loop with history,
  guard and stopping rules), its training time (``final.wall_time_s``, evaluations excluded);
* gdlab compiled: the same with ``compile: on``; its training time. The one-off compile time
  (``final.engine.compile_s``) is reported separately and is not part of the ratios.
* compiled torch.optim: the autograd loop with ``torch.compile`` of the model's loss (forward
  and, through AOT autograd, backward) and of ``torch.optim.SGD.step``, PyTorch's own compiled
  optimizer step. Against gdlab compiled it measures what gdlab's functional update rules (the
  whole block of steps, update included, in one graph) win over compiling torch.optim's step.

    python benchmarks/fastpath.py [--quick] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from common import Row, base_parser, median_rounds, report, timed

from gdlab.config import RunConfig
from gdlab.optim.losses import get_loss
from gdlab.run import prepare, run


def numpy_loop(X: np.ndarray, y: np.ndarray, lr: float, steps: int) -> Callable[[], float]:
    def go() -> float:
        w, b = np.zeros(X.shape[1]), 0.0
        loss = 0.0
        for _ in range(steps):
            r = X @ w + b - y
            loss = 0.5 * float(r @ r) / len(y)
            w = w - lr * (X.T @ r) / len(y)
            b = b - lr * r.mean()
        return loss
    return go


def autograd_loop(config: RunConfig, steps: int, compiled: bool = False) -> Callable[[], float]:
    """The hand loop on the run's model and rows, from the same initial parameters every round;
    ``compiled``: the loss and ``SGD.step`` under ``torch.compile`` (compiled once, in the
    warm-up round)."""
    prepared = prepare(config)
    X, y, model = prepared.data.X_train, prepared.data.y_train, prepared.model
    loss_fn = get_loss(prepared.loss_name)
    initial = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_of, step = (lambda: loss_fn(model(X), y)), opt.step
    if compiled:
        loss_of, step = torch.compile(loss_of), torch.compile(step)

    def go() -> float:
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), initial):
                p.copy_(p0)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_of()
            loss.backward()
            step()
            loss.item()
        return time.perf_counter() - t0
    return go


def gdlab_run(config: RunConfig) -> Callable[[], float]:
    def go() -> float:
        result = run(config)
        go.engines.append(result.final["engine"])  # type: ignore[attr-defined]
        return result.final["wall_time_s"]
    go.engines = []  # type: ignore[attr-defined]
    return go


def measure_case(name: str, base: dict, steps: int, repeats: int, with_numpy: bool) -> list[Row]:
    config = {**base, "steps": steps, "nonfinite_policy": "stop", "eval_every": steps, "log_every": 1}
    eager = gdlab_run(RunConfig.from_dict({**config, "compile": "off"}))
    compiled = gdlab_run(RunConfig.from_dict({**config, "compile": "on"}))
    hand = autograd_loop(RunConfig.from_dict(config), steps)
    contenders: dict[str, Callable[[], float]] = {"autograd loop": hand, "gdlab eager": eager,
                                                  "gdlab compiled": compiled,
                                                  "compiled torch.optim": autograd_loop(
                                                      RunConfig.from_dict(config), steps, compiled=True)}
    if with_numpy:
        data = prepare(RunConfig.from_dict(config)).data
        X = data.X_train.double().numpy()
        y = data.y_train.double().numpy().reshape(-1)
        loop = numpy_loop(X, y, base["lr"], steps)

        contenders["numpy"] = timed(loop)
    med = median_rounds(contenders, repeats)
    engine = compiled.engines[0]  # type: ignore[attr-defined]  (the first compile; later ones hit caches)
    case = f"{name}, {steps} steps"
    rows = [Row("fastpath", case, f"{k} time", med[k], "s") for k in med]
    rows.append(Row("fastpath", case, "compile time (first run)", engine["compile_s"] or float("nan"), "s",
                    note=f"path {engine['path']}, block {engine['block']}; later runs hit the compile caches"))
    if with_numpy:
        rows.append(Row("fastpath", case, "gdlab compiled / numpy", med["gdlab compiled"] / med["numpy"],
                        target="<= 3"))
    rows.append(Row("fastpath", case, "autograd loop / gdlab compiled", med["autograd loop"] / med["gdlab compiled"],
                    target=">= 8" if with_numpy else ">= 1.3"))
    rows.append(Row("fastpath", case, "compiled torch.optim / gdlab compiled",
                    med["compiled torch.optim"] / med["gdlab compiled"],
                    note="torch.compile of torch.optim's step against gdlab's functional rules in one graph"))
    rows.append(Row("fastpath", case, "gdlab eager / autograd loop", med["gdlab eager"] / med["autograd loop"],
                    note="the eager loop's bookkeeping"))
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    rows = measure_case("linreg N=100 d=1", {"task": "linreg", "lr": 0.1}, 200 if args.quick else 1000,
                        repeats, with_numpy=True)
    rows += measure_case("digits MLP 64-128-10", {"task": "digits", "model": "mlp:64-128-10:relu", "lr": 0.5},
                         50 if args.quick else 500, repeats, with_numpy=False)
    report("fastpath", rows, meta={"repeats": repeats, "quick": args.quick, "threads": torch.get_num_threads()},
           out_dir=args.out)


if __name__ == "__main__":
    main()

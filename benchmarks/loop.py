"""Per-step overhead of the eager training loop against hand-written torch.optim loops.

Cases (float32, plain SGD with a constant learning rate, the default guard ``rollback``):

* linreg full: linear regression, 80 training rows (gdlab's ``linreg`` task), 1000 full-batch
  steps at lr 0.1 (``--quick``: 200 steps);
* digits MLP full: the default 64-128-10 relu MLP, cross-entropy, 1437 training rows, 500
  full-batch steps at lr 0.5 (``--quick``: 50 steps);
* iris stochastic: logistic regression on 120 rows, one row per step, 3 epochs = 360 steps at
  lr 0.05 (``--quick``: 1 epoch), where the model is so small that the loop's bookkeeping is most
  of a step;
* digits MLP stochastic: the MLP above, one row per step, 3 epochs = 4311 steps at lr 0.01
  (``--quick``: 1 epoch), where most steps are not logged.

Contenders, timed in the same process as medians over ``--repeats`` rounds after a warm-up
round (every round runs each contender once, in a shuffled order, so load changes hit them alike):

* hand loop: ``opt.zero_grad(); loss = loss_fn(model(Xb), yb); loss.backward(); opt.step()``
  with ``torch.optim.SGD`` on a freshly built model, ``Xb`` all rows (full) or the row slice
  ``X[i:i+1]`` for each ``i`` of the same seeded permutations the run's sample schedule draws
  (stochastic): the same steps gdlab takes, with no history, guard or stopping rules;
* gdlab eager: ``gdlab.run.run`` with ``compile: off``, its training time
  (``final.wall_time_s``: gradients, guard, clipping and updates; evaluations excluded).

The stochastic target (<= 1.3) allows the work a hand loop leaves out and a step of one row cannot
hide: the guard's gradient norm, the rollback snapshot and the float64 loss accumulation.

    python benchmarks/loop.py [--quick] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from common import Row, base_parser, median_rounds, report

from gdlab.config import RunConfig
from gdlab.optim.losses import get_loss
from gdlab.run import prepare, run


def hand_loop(config: RunConfig, steps: int) -> Callable[[], float]:
    """A plain torch.optim loop over the run's data and schedule; returns its seconds."""
    data = prepare(config).data
    X, y = data.X_train, data.y_train
    n = data.n_train

    def go() -> float:
        prepared = prepare(config)
        model, schedule = prepared.model, prepared.schedule
        loss_fn = get_loss(prepared.loss_name)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        gen = torch.Generator().manual_seed(int(schedule.seed))
        t0 = time.perf_counter()
        if schedule.is_full:
            for _ in range(steps):
                opt.zero_grad()
                loss = loss_fn(model(X), y)
                loss.backward()
                opt.step()
        else:
            for _ in range(-(-steps // n)):
                for i in torch.randperm(n, generator=gen).tolist():
                    opt.zero_grad()
                    loss = loss_fn(model(X[i : i + 1]), y[i : i + 1])
                    loss.backward()
                    opt.step()
        return time.perf_counter() - t0
    return go


def gdlab_run(config: RunConfig) -> Callable[[], float]:
    """``run(config)`` on a freshly prepared run; returns its training time in seconds."""
    def go() -> float:
        prepared = prepare(config)
        return run(config, prepared=prepared).final["wall_time_s"]
    return go


def measure_case(name: str, config: dict, repeats: int, target: str) -> list[Row]:
    """Rows for one case: both contenders' median seconds and their ratio against ``target``."""
    cfg = RunConfig.from_dict({**config, "compile": "off"})
    steps = cfg.steps if cfg.steps is not None else int(cfg.max_epochs * prepare(cfg).data.n_train)
    med = median_rounds({"hand loop": hand_loop(cfg, steps), "gdlab eager": gdlab_run(cfg)}, repeats,
                        shuffle=True)
    case = f"{name}, {steps} steps"
    rows = [Row("loop", case, f"{k} time", med[k], "s") for k in med]
    rows.append(Row("loop", case, "eager loop / hand torch.optim loop", med["gdlab eager"] / med["hand loop"],
                    target=target, note="history, guard, stop rules and snapshots"))
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    epochs = 1 if args.quick else 3
    full_linreg = 200 if args.quick else 1000
    full_digits = 50 if args.quick else 500
    rows = measure_case("linreg N=80 d=1 full", {"task": "linreg", "lr": 0.1, "steps": full_linreg},
                        repeats, "<= 1.15")
    rows += measure_case("digits MLP 64-128-10 full", {"task": "digits", "lr": 0.5, "steps": full_digits},
                         repeats, "<= 1.05")
    rows += measure_case("iris logistic stochastic", {"task": "iris", "lr": 0.05, "regime": "stochastic",
                                                      "max_epochs": epochs}, repeats, "<= 1.3")
    rows += measure_case("digits MLP 64-128-10 stochastic", {"task": "digits", "lr": 0.01, "regime": "stochastic",
                                                             "max_epochs": epochs}, repeats, "<= 1.3")
    report("loop", rows, meta={"repeats": repeats, "quick": args.quick, "threads": torch.get_num_threads()},
           out_dir=args.out)


if __name__ == "__main__":
    main()

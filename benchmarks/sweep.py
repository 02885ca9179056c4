"""Learning-rate sweeps: K runs stacked into one model against K runs one after another.

Cases: a 32-point log grid of learning rates (``--quick``: 8) over

* linreg: linear regression, 100 rows, 1 feature, 1000 full-batch GD steps (``--quick``: 200);
* breast_cancer: L2 logistic regression (l2 = 1e-3), 455 rows, 30 features, 1000 steps (200);
* digits MLP 64-128-10 (relu), 1437 rows, 300 full-batch steps (``--quick``: 30), where one
  run is already compute-bound on CPU.

Contenders (end-to-end wall time of the Python call, medians over ``--repeats`` rounds after a
warm-up round): one run (``gdlab.run.run`` at the grid's middle rate), the sequential sweep
(``run_sweep(stacked="off")``), the stacked sweep (``stacked="on"``), and the automatic choice
(``stacked="auto"``, what studies use; it measures a few steps of each and picks).

    python benchmarks/sweep.py [--quick] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import numpy as np
import torch

from common import Row, base_parser, median_rounds, report, timed

from gdlab.config import RunConfig
from gdlab.run import run
from gdlab.sweep import run_sweep, sweep_configs


def measure_case(name: str, base: dict, points: int, repeats: int, auto_target: str | None,
                 stacked_target: str | None) -> list[Row]:
    config = RunConfig.from_dict({**base, "nonfinite_policy": "stop", "compile": "off"})
    lrs = list(np.geomspace(base["lr"] / 30, base["lr"] * 3, points))
    configs = sweep_configs(config, lrs=lrs)
    middle = configs[points // 2]
    contenders = {
        "one run": timed(lambda: run(middle)),
        "sequential sweep": timed(lambda: run_sweep(configs, stacked="off")),
        "stacked sweep": timed(lambda: run_sweep(configs, stacked="on")),
        "auto sweep": timed(lambda: run_sweep(configs, stacked="auto")),
    }
    med = median_rounds(contenders, repeats)
    chosen = contenders["auto sweep"].last[0].final["engine"]  # type: ignore[attr-defined]
    case = f"{name}, {points} lrs x {base['steps']} steps"
    rows = [Row("sweep", case, f"{k} time", med[k], "s") for k in med]
    rows.append(Row("sweep", case, "stacked sweep / one run", med["stacked sweep"] / med["one run"],
                    target=stacked_target))
    rows.append(Row("sweep", case, "sequential sweep / stacked sweep", med["sequential sweep"] / med["stacked sweep"]))
    rows.append(Row("sweep", case, "auto sweep / sequential sweep", med["auto sweep"] / med["sequential sweep"],
                    target=auto_target, note=f"auto chose {chosen['path']}"
                    + (f" ({chosen.get('sweep')})" if chosen.get("sweep") else "")))
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    points = 8 if args.quick else 32
    rows = measure_case("linreg N=100 d=1", {"task": "linreg", "lr": 0.3, "steps": 200 if args.quick else 1000},
                        points, repeats, auto_target=None, stacked_target="<= 1.5")
    rows += measure_case("breast_cancer L2 logistic",
                         {"task": "breast_cancer", "model": "logistic", "l2": 1e-3, "lr": 0.3,
                          "steps": 200 if args.quick else 1000}, points, repeats, auto_target=None,
                         stacked_target="<= 1.5")
    rows += measure_case("digits MLP 64-128-10", {"task": "digits", "model": "mlp:64-128-10:relu", "lr": 0.5,
                                                  "steps": 30 if args.quick else 300},
                         points, repeats, auto_target="<= 1.05", stacked_target=None)
    report("sweep", rows, meta={"repeats": repeats, "quick": args.quick, "threads": torch.get_num_threads()},
           out_dir=args.out)


if __name__ == "__main__":
    main()

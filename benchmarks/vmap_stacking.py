"""Stacking K copies: gdlab's hand-stacked forward against ``torch.func`` (``stack_module_state``
+ ``vmap(grad_and_value(functional_call))``), one update of every copy.

The question it answers: can stacked sweeps use ``vmap`` over any model (CNNs, recurrent nets)
instead of :class:`gdlab.engine.steppers.stacked.StackedForward`, which knows only linear,
logistic and MLP models? The rule set for the switch: within 10 % of the hand-stacked step on these cases.

Cases: K = 8 and 32 copies (plain GD, one shared batch) of linear regression (80 rows), the
breast_cancer logistic regression (455 rows), a digits MLP 64-32-10 on all 1437 rows and on one
row (a stochastic step), an MNIST-1D MLP 40-64-10 on 32 rows (a mini-batch step). Both
contenders compute the per-copy losses, gradients, gradient norms and the update; medians over
``--repeats`` interleaved rounds. Both give the same losses (checked before timing).

    python benchmarks/vmap_stacking.py [--quick] [--repeats R] [--out DIR]
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from common import Row, base_parser, median_rounds, report, timed

from gdlab.config import RunConfig
from gdlab.engine.steppers.stacked import StackedForward, StackedObjective, stacked_step
from gdlab.optim.functional import functional_rule, global_norm
from gdlab.run import prepare


def contenders(task: str, model: str, K: int, rows: int | None) -> dict:
    prepared = prepare(RunConfig.from_dict(dict(task=task, model=model, compile="off")))
    X, y = prepared.data.X_train[:rows], prepared.data.y_train[:rows]
    params, _ = stack_module_state([copy.deepcopy(prepared.model) for _ in range(K)])
    names = list(params)
    stacked = [params[n].detach() for n in names]
    objective = StackedObjective(StackedForward(prepared.model), prepared.loss_fn,
                                 [p.dim() >= 2 for p in stacked])
    rule = functional_rule("gd", 0.1)
    state, lrs = rule.init(stacked), torch.full((K,), 0.1)
    skeleton = copy.deepcopy(prepared.model).to("meta")

    def one_copy(ps, X, y):
        return prepared.loss_fn(functional_call(skeleton, dict(zip(names, ps)), (X,)), y)

    per_copy = vmap(grad_and_value(one_copy), in_dims=(0, None, None))

    def hand():
        return stacked_step(objective, rule, stacked, state, lrs, X, y, False)[2]

    def vmapped():
        grads, losses = per_copy(stacked, X, y)
        global_norm(list(grads), copies=True)
        rule.update(stacked, list(grads), state, lrs)
        return losses

    torch.testing.assert_close(vmapped().double(), hand().double(), rtol=1e-4, atol=1e-6)
    return {"hand-stacked": hand, "vmap": vmapped}


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    repeats = args.repeats or (5 if args.quick else 30)
    cases = [("linreg", "linear", None), ("breast_cancer", "logistic", None), ("digits", "mlp:64-32-10:tanh", None),
             ("digits", "mlp:64-32-10:tanh", 1), ("mnist1d", "mlp:40-64-10:relu", 32)]
    rows = []
    for K in (8,) if args.quick else (8, 32):
        for task, model, n in cases:
            fns = contenders(task, model, K, n)
            med = median_rounds({k: timed(f) for k, f in fns.items()}, repeats, shuffle=True)
            case = f"{task} {model}, K={K}, {'all' if n is None else n} rows"
            rows.append(Row("vmap_stacking", case, "vmap / hand-stacked step", med["vmap"] / med["hand-stacked"],
                            note=f"hand-stacked {med['hand-stacked'] * 1e6:.0f} us"))
    report("vmap_stacking", rows, meta={"repeats": repeats, "threads": torch.get_num_threads()}, out_dir=args.out)


if __name__ == "__main__":
    main()

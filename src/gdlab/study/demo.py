"""The main job for now: one task trained by batch, mini-batch and stochastic gradient descent
under the same budget of gradient evaluations, compared side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gdlab.config import RunConfig
from gdlab.engine.loop import Callback
from gdlab.run import PreparedRun, RunResult, prepare, run


@dataclass(frozen=True)
class DemoEntry:
    """One column of the demo: a label and the regime, step size and batch size that define it."""

    label: str
    regime: str
    lr: float
    batch_size: int | None = None


# Step sizes are fixed per regime, not tuned (the studies issue tunes them under one budget): each
# is a reasonable value for standardised inputs; an exact full-batch step tolerates a larger lr.
DEFAULT_ENTRIES = (
    DemoEntry("batch GD", "full", 0.5),
    DemoEntry("mini-batch B=32", "minibatch", 0.1, 32),
    DemoEntry("stochastic B=1", "stochastic", 0.01),
)


def plan_demo(task: str = "digits", *, epochs: float = 20.0, seed: int = 0, model: str | None = None,
              entries: Sequence[DemoEntry] = DEFAULT_ENTRIES,
              extra: dict | None = None) -> list[tuple[DemoEntry, RunConfig, PreparedRun]]:
    """Build and check every run of the demo before any trains (so a mistake fails at once).

    Each run gets ``epochs`` gradient evaluations / N, the same seed and so the same initial
    parameters and data split.
    """
    planned = []
    for entry in entries:
        config = RunConfig.from_dict(dict(task=task, model=model, optimizer="gd", lr=entry.lr,
                                          regime=entry.regime, batch_size=entry.batch_size,
                                          max_epochs=epochs, seed=seed, **(extra or {})))
        planned.append((entry, config, prepare(config)))
    return planned


def run_demo(
    planned: Sequence[tuple[DemoEntry, RunConfig, PreparedRun]],
    callbacks_for: Callable[[DemoEntry, PreparedRun], Sequence[Callback]] | None = None,
) -> list[tuple[DemoEntry, RunResult]]:
    """Train each planned run in order and return (entry, result) pairs."""
    results = []
    for entry, config, prepared in planned:
        callbacks = callbacks_for(entry, prepared) if callbacks_for else ()
        results.append((entry, run(config, callbacks=callbacks, prepared=prepared)))
    return results


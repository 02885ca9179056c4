"""The main job for now: one task trained by batch, mini-batch and stochastic gradient descent
under the same budget of gradient evaluations, compared side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gdlab.config import RunConfig
from gdlab.engine.loop import Callback
from gdlab.engine.runner import RunResult, run


@dataclass(frozen=True)
class DemoEntry:
    """One row of the demo: a label and the config changes that define it."""

    label: str
    regime: str
    lr: float
    batch_size: int | None = None


# Step sizes are fixed per regime, not tuned here (the studies issue tunes them fairly): each is a
# reasonable value for standardised inputs; a full-batch step is exact, so it tolerates a larger lr.
DEFAULT_ENTRIES = (
    DemoEntry("batch GD (full)", "full", 0.5),
    DemoEntry("mini-batch GD (B=32)", "minibatch", 0.1, 32),
    DemoEntry("stochastic GD (B=1)", "stochastic", 0.01),
)


def compare_regimes(
    task: str = "digits",
    *,
    epochs: float = 20.0,
    seed: int = 0,
    model: str | None = None,
    entries: Sequence[DemoEntry] = DEFAULT_ENTRIES,
    callbacks_for: Callable[[DemoEntry, RunConfig], Sequence[Callback]] | None = None,
    extra: dict | None = None,
) -> list[tuple[DemoEntry, RunResult]]:
    """Train ``task`` once per entry for ``epochs`` gradient evaluations / N each (same seed, same
    initial parameters) and return the results in entry order."""
    results = []
    for entry in entries:
        config = RunConfig.from_dict(
            dict(
                task=task, model=model, optimizer="gd", lr=entry.lr, regime=entry.regime,
                batch_size=entry.batch_size, max_epochs=epochs, seed=seed, **(extra or {}),
            )
        )
        callbacks = callbacks_for(entry, config) if callbacks_for else ()
        results.append((entry, run(config, callbacks=callbacks)))
    return results

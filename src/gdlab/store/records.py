"""The shape in which stored runs are read back: one StoredRun per run of a study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PHASES = ("tune", "final", "single")


@dataclass
class StoredRun:
    """One run as the store holds it.

    run_key: unique, deterministic id of (study, task, optimizer, phase, trial/setting, seed);
    study, task, optimizer: the study's names for them (``optimizer`` is the study's label for an
    optimizer entry, e.g. "sgd" or "adam-full", not necessarily the torch rule); phase: "tune"
    (a learning-rate search trial), "final" (the best setting re-run over the study's seeds) or
    "single" (a plain ``gdlab train``); trial: the tuning trial number (None for final runs);
    seed; lr and params: the hyper-parameters of this run; record: the full run record
    (config, environment, final, history, events, diagnostics), as ``RunResult.to_record()`` gives.
    """

    run_key: str
    study: str
    task: str
    optimizer: str
    phase: str
    trial: int | None
    seed: int
    lr: float
    params: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.record.get("final", {})

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.record.get("history", [])

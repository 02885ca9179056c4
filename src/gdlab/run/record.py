"""The run record (DESIGN.md, "The run record"): the finished run's parts, the environment that
reproduces it, and JSON-safe numbers."""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import gdlab
from gdlab.config import RunConfig
from gdlab.distributed import world_size
from gdlab.engine.calibrate import ChunkChoice
from gdlab.engine.loop import LoopOutcome
from gdlab.run.build import PreparedRun, precision_name


@dataclass
class RunResult:
    """A finished run: the record's parts plus the trained model (not part of the record)."""

    config: dict[str, Any]
    environment: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None

    def to_record(self) -> dict[str, Any]:
        """The run record as plain JSON-able data; non-finite numbers become null with an event."""
        events = list(self.events)
        record = {"config": self.config, "environment": self.environment,
                  "final": _json_safe(self.final, "final", events),
                  "history": _json_safe(self.history, "history", events), "events": events,
                  "diagnostics": _json_safe(self.diagnostics, "diagnostics", events)}
        return record


def _json_safe(value: Any, where: str, events: list[dict[str, Any]]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        events.append({"step": None, "kind": "nonfinite_value",
                       "detail": f"{where} was {value}; written as null"})
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{where}.{k}", events) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", events) for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item(), where, events)
    return value


def environment_info(config: RunConfig, device: torch.device, chunk: ChunkChoice | None = None) -> dict[str, Any]:
    """Versions, device, threads, seed and config hash: what a run needs to be reproduced; the
    precision, and the chunk size with how it was chosen (``chunk``: given, memory, calibrated,
    cache; ``chunk_calibrated``: chosen by timing on this machine)."""
    chunk_info = {} if chunk is None else {
        "chunk_size": chunk.size, "chunk_source": chunk.source, "chunk_calibrated": chunk.calibrated,
        "chunk_choice_s": chunk.seconds, **({"chunk_note": chunk.reason} if chunk.reason else {}),
    }
    return {
        "gdlab": gdlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "seed": config.seed,
        "config_hash": config.config_hash(),
        "world_size": world_size(),
        "deterministic": config.deterministic,
        "precision": precision_name(config),
        "accumulate": config.accumulate or config.dtype,
        **chunk_info,
    }


def make_result(config: RunConfig, prepared: PreparedRun, outcome: LoopOutcome, engine: dict[str, Any]) -> RunResult:
    """The run record's parts (config with resolved defaults, environment, final, history, events,
    diagnostics) and the trained model, from a finished loop; ``engine`` says how it ran."""
    net = prepared.model
    resolved = config.to_dict()
    resolved.update(model=prepared.model_spec, loss=prepared.loss_name,
                    batch_size=prepared.schedule.batch_size, chunk_size=prepared.chunk_size,
                    eval_every=prepared.eval_every, log_every=prepared.log_every)
    final = dict(outcome.final)
    shard = prepared.shard
    final.update(n_train=shard.n_train if shard else prepared.data.n_train,
                 n_test=shard.n_test if shard else prepared.data.n_test,
                 parameters=sum(p.numel() for p in net.parameters()), engine=engine)
    return RunResult(
        config=resolved, environment=environment_info(config, prepared.device, prepared.chunk), final=final,
        history=outcome.history, events=outcome.events, diagnostics=outcome.diagnostics, model=net,
    )

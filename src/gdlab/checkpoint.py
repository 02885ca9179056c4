"""Checkpoints: everything a run needs to continue exactly, written atomically, read safely.

A checkpoint (``DIR/checkpoint.pt``) holds the validated config, the model, optimizer and
scheduler state dicts, the sample schedule's state (epoch permutation and generator), the torch,
NumPy and Python RNG states and the loop's counters and records so far. It is written to a
temporary file in the same directory, flushed and fsync'ed, then renamed over the previous one, so
a crash or a kill during the write leaves the previous checkpoint intact. It is read with
``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdlab.errors import GdlabError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch, NumPy and Python generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def write_checkpoint(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` to ``directory/checkpoint.pt``; returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GdlabError(f"cannot write checkpoint in '{directory}' ({exc.strerror or exc}); free space or choose another --out") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Load ``directory/checkpoint.pt`` with ``weights_only=True`` (GdlabError if missing,
    truncated, corrupted or not a gdlab checkpoint)."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise GdlabError(f"no checkpoint at '{path}'; give a directory written with --out DIR --checkpoint-every K")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise GdlabError(f"cannot read checkpoint '{path}' ({first}); it is truncated or not a gdlab checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or "config" not in payload:
        raise GdlabError(f"'{path}' is not a gdlab checkpoint (format {FORMAT_VERSION}); re-run with --checkpoint-every")
    return payload

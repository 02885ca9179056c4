"""Run directories: ``run.json`` and ``params.pt`` written atomically, and read back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gdlab.config import RunConfig
from gdlab.errors import GdlabError
from gdlab.run.build import PreparedRun, prepare
from gdlab.run.record import RunResult


def check_output_dir(out_dir: str | Path) -> Path:
    """Fail early (before training) if ``out_dir`` cannot become a run directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GdlabError(f"--out '{out}' exists and is not a directory; choose another path")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise GdlabError(f"--out '{out}': '{parent}' is not writable; choose a writable directory")
    return out


def save_run(result: RunResult, out_dir: str | Path) -> Path:
    """Write ``run.json`` (the record) and ``params.pt`` (the model's state_dict) into ``out_dir``.

    Files are written to a temporary directory beside ``out_dir`` and moved in place at the end, so
    an error never leaves a half-written run directory.
    """
    out = check_output_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "run.json").write_text(json.dumps(result.to_record(), indent=2) + "\n")
        if result.model is not None:
            torch.save(result.model.state_dict(), tmp / "params.pt")
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    except OSError as exc:
        raise GdlabError(
            f"cannot save the run to '{out}' ({exc.strerror or exc}); free space or choose another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_run(run_dir: str | Path) -> PreparedRun:
    """Rebuild a saved run (``run.json`` + ``params.pt`` from :func:`save_run`) with its trained
    parameters loaded (``torch.load(weights_only=True)``: no pickled code is executed)."""
    run_dir = Path(run_dir)
    record_path, params_path = run_dir / "run.json", run_dir / "params.pt"
    for path in (record_path, params_path):
        if not path.is_file():
            raise GdlabError(f"'{path}' is missing; give a directory written by 'gdlab train --out DIR'")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        config_data = record["config"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise GdlabError(f"'{record_path}' is not a gdlab run record; re-save the run with --out") from None
    config = RunConfig.from_dict(config_data)
    prepared = prepare(config)
    try:
        state = torch.load(params_path, map_location=prepared.device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdlabError(f"cannot load '{params_path}' ({first[:200]}); re-save the run with --out") from None
    try:
        prepared.model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise GdlabError(
            f"'{params_path}' does not match model '{config.model}' ({first}); use the params.pt "
            "saved with this run.json"
        ) from None
    return prepared

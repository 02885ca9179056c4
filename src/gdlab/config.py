"""The validated run configuration: one schema for the CLI, YAML/JSON files and the Python API.

Validation here covers the fields' own types and ranges; names that depend on registries (task,
model, optimizer, loss) are checked where they are resolved, with suggestions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, did_you_mean

DEFAULT_STEPS = 100


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Units: learning rate per step, time in seconds,
    memory in MiB, epochs in gradient evaluations / N.

    Precision: ``dtype`` is the parameters' and the data's dtype; ``autocast`` (``"bfloat16"`` or
    None) runs the forward passes under ``torch.autocast`` with float32 parameters; ``accumulate``
    (None = the parameters' dtype, ``"float32"`` or ``"float64"``, never bf16) is the dtype in
    which the full-batch gradient and loss are summed across chunks. ``gdlab train --precision
    float32|float64|bf16`` sets ``dtype`` and ``autocast`` together.
    """

    task: str = "digits"
    data: str | None = None
    data_dir: str | None = None
    mmap: bool = False
    n_samples: int | None = None
    test_fraction: float = 0.2
    standardize: bool | None = None
    model: str | None = None
    loss: str | None = None
    optimizer: str = "gd"
    lr: float = 0.1
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    regime: str = "full"
    batch_size: int | None = None
    last_batch: str = "keep"
    chunk_size: int | None = None
    memory_budget_mb: float = 256.0
    l1: float = 0.0
    l2: float = 0.0
    layer_mode: str = "train"
    steps: int | None = None
    max_epochs: float | None = None
    loss_tol: float | None = None
    grad_tol: float | None = None
    time_budget_s: float | None = None
    divergence_factor: float = 1e6
    schedule: str | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    nonfinite_policy: str = "rollback"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 10
    health_every: int | None = None
    vanishing_ratio: float = 1e-3
    exploding_factor: float = 1e3
    sharpness_every: int | None = None
    sharpness_iters: int = 20
    eval_every: int | None = None
    log_every: int | None = None
    seed: int = 0
    data_seed: int | None = None
    deterministic: bool = False
    checkpoint_every: int | None = None
    compile: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    autocast: str | None = None
    accumulate: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build and validate a config from a mapping; unknown keys are errors (with suggestions)."""
        if not isinstance(data, dict):
            raise GdlabError(
                f"a run config must be a mapping of field: value, got {type(data).__name__}"
            )
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise GdlabError(
                    f"unknown config field '{key}'{did_you_mean(str(key), names)}; "
                    f"valid fields: {', '.join(names)}"
                )
        return cls(**data)

    @property
    def data_seed_value(self) -> int:
        """The seed of data generation and the train/test split: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of the config."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def validate(self) -> None:
        """Check types and ranges of every field (GdlabError naming the field and the fix); fill
        the default stopping rule. Called on construction: a RunConfig is always valid, and
        immutable (``dataclasses.replace`` makes a changed, re-validated copy)."""
        _check_str(self, "task")
        _check_optional(self, "data", str)
        _check_optional(self, "data_dir", str)
        if not isinstance(self.mmap, bool):
            raise GdlabError(f"config field 'mmap' must be true or false, got {self.mmap!r}")
        _check_int(self, "n_samples", minimum=2, optional=True)
        _check_float(self, "test_fraction", minimum=0.0, below=1.0)
        _check_optional(self, "standardize", bool)
        _check_optional(self, "model", str)
        _check_optional(self, "loss", str)
        _check_str(self, "optimizer")
        _check_float(self, "lr", above=0.0, hint="use a positive learning rate such as --lr 0.1")
        if not isinstance(self.optimizer_params, dict):
            raise GdlabError(
                "config field 'optimizer_params' must be a mapping such as {momentum: 0.9}"
            )
        _check_str(self, "regime")
        _check_int(self, "batch_size", minimum=1, optional=True)
        _check_choice(self, "last_batch", ("keep", "drop"))
        _check_int(self, "chunk_size", minimum=1, optional=True)
        _check_float(self, "memory_budget_mb", above=0.0)
        _check_float(self, "l1", minimum=0.0)
        _check_float(self, "l2", minimum=0.0)
        _check_choice(self, "layer_mode", ("train", "eval"))
        _check_int(self, "steps", minimum=0, optional=True)
        _check_float(self, "max_epochs", above=0.0, optional=True)
        _check_float(self, "loss_tol", optional=True)
        _check_float(self, "grad_tol", minimum=0.0, optional=True)
        _check_float(self, "time_budget_s", above=0.0, optional=True)
        _check_float(self, "divergence_factor", above=1.0)
        _check_optional(self, "schedule", str)
        _check_float(self, "clip_norm", above=0.0, optional=True)
        _check_float(self, "clip_value", above=0.0, optional=True)
        _check_choice(self, "nonfinite_policy", ("rollback", "stop", "raise"))
        _check_float(self, "rollback_lr_factor", above=0.0, below=1.0)
        _check_int(self, "max_rollbacks", minimum=0)
        _check_int(self, "health_every", minimum=1, optional=True)
        _check_float(self, "vanishing_ratio", above=0.0, below=1.0)
        _check_float(self, "exploding_factor", above=1.0)
        _check_int(self, "sharpness_every", minimum=1, optional=True)
        _check_int(self, "sharpness_iters", minimum=2)
        if self.schedule not in (None, "constant") and self.optimizer == "linesearch":
            raise GdlabError(
                "optimizer 'linesearch' chooses its own step each iteration, so it takes no "
                "schedule; drop --schedule or use another optimizer"
            )
        _check_int(self, "eval_every", minimum=1, optional=True)
        _check_int(self, "log_every", minimum=1, optional=True)
        _check_int(self, "seed", minimum=0)
        _check_int(self, "data_seed", minimum=0, optional=True)
        _check_int(self, "checkpoint_every", minimum=1, optional=True)
        _check_choice(self, "compile", ("auto", "on", "off"))
        if not isinstance(self.deterministic, bool):
            raise GdlabError(f"config field 'deterministic' must be true or false, got {self.deterministic!r}")
        _check_choice(self, "device", ("cpu", "cuda", "mps", "auto"), prefix_ok="cuda:")
        if self.device.startswith("cuda:") and not self.device[5:].isdigit():
            raise GdlabError(
                f"config field 'device' must be cuda:K with K a GPU index such as cuda:0, got {self.device!r}"
            )
        _check_choice(self, "dtype", ("float32", "float64"))
        _check_precision(self)
        if self.grad_tol is not None and self.regime != "full":
            raise GdlabError(
                "grad_tol tests the full-batch gradient norm, which only regime 'full' computes; "
                "drop --grad-tol or use --regime full"
            )
        if self.steps is None and self.max_epochs is None and self.time_budget_s is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)


def _check_precision(cfg: RunConfig) -> None:
    """autocast and accumulate: known names, and consistent with the parameters' dtype."""
    if cfg.autocast is not None:
        _check_choice(cfg, "autocast", ("bfloat16",))
        if cfg.dtype != "float32":
            raise GdlabError(
                f"autocast 'bfloat16' needs float32 parameters, but dtype is '{cfg.dtype}'; "
                "use --precision bf16 (float32 parameters) or drop autocast"
            )
    if cfg.accumulate is not None:
        _check_choice(cfg, "accumulate", ("float32", "float64"))
        if cfg.accumulate == "float32" and cfg.dtype == "float64":
            raise GdlabError(
                "accumulate 'float32' would round float64 gradients; use --accumulate float64 or drop it"
            )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping from ``path`` (GdlabError if missing, unreadable or not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GdlabError(f"config file '{path}' does not exist; give the path of a YAML or JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GdlabError(f"config file '{path}' is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdlabError(f"config file '{path}' is not valid YAML/JSON ({first}); fix its syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GdlabError(f"config file '{path}' must hold a mapping of field: value at the top level")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_optional(cfg: RunConfig, name: str, kind: type) -> None:
    value = getattr(cfg, name)
    if value is not None and not isinstance(value, kind):
        raise GdlabError(
            f"config field '{name}' must be a {kind.__name__} or null, got {value!r}"
        )


def _check_str(cfg: RunConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or not value:
        raise GdlabError(f"config field '{name}' must be a non-empty string, got {value!r}")


def _check_choice(
    cfg: RunConfig, name: str, choices: tuple[str, ...], prefix_ok: str | None = None
) -> None:
    value = getattr(cfg, name)
    if isinstance(value, str) and (value in choices or (prefix_ok and value.startswith(prefix_ok))):
        return
    raise GdlabError(
        f"config field '{name}' must be one of {', '.join(choices)}, got {value!r}"
        f"{did_you_mean(str(value), choices)}"
    )


def _check_int(
    cfg: RunConfig, name: str, *, minimum: int | None = None, optional: bool = False
) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, float) and value.is_integer():
        value = int(value)
        object.__setattr__(cfg, name, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GdlabError(f"config field '{name}' must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise GdlabError(f"config field '{name}' must be >= {minimum}, got {value}")


def _check_float(
    cfg: RunConfig,
    name: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    optional: bool = False,
    hint: str = "",
) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise GdlabError(f"config field '{name}' must be a finite number, got {value!r}")
    object.__setattr__(cfg, name, float(value))
    fix = f"; {hint}" if hint else ""
    if minimum is not None and value < minimum:
        raise GdlabError(f"config field '{name}' must be >= {minimum}, got {value}{fix}")
    if above is not None and value <= above:
        raise GdlabError(f"config field '{name}' must be > {above}, got {value}{fix}")
    if below is not None and value >= below:
        raise GdlabError(f"config field '{name}' must be < {below}, got {value}{fix}")

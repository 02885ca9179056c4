"""The validated run configuration: one schema for the CLI, YAML/JSON files and the Python API.

Every run option is declared once, as a field of :class:`RunConfig`: type, default, bounds or
choices, meaning and CLI flag. The ``gdlab train`` flags (:func:`flag_arguments`), the
config-file loader (:meth:`RunConfig.from_dict`) and the options table of docs/cli.md
(:func:`options_table`) are generated from it, so they cannot disagree.

Validation here covers the fields' own types and ranges; names that depend on registries (task,
model, optimizer, loss) are checked where they are resolved, with suggestions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import reprlib
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from gdlab.errors import GdlabError, did_you_mean

DEFAULT_STEPS = 100
DEVICES = ("cpu", "cuda", "mps", "auto")


def _whole(value: Any) -> Any:
    """An integral float (``3.0``, ``1.0e3`` in a YAML or JSON file) stands for the int it names."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _device(value: Any) -> Any:
    """One of DEVICES or cuda:K; not a Literal because of the GPU index."""
    if not isinstance(value, str) or not (value in DEVICES or value.startswith("cuda:")):
        raise ValueError(_one_of("device", value, DEVICES))
    if value.startswith("cuda:") and not value[5:].isdigit():
        raise ValueError("config field 'device' must be cuda:K with K a GPU index such as cuda:0, "
                         f"got {_short.repr(value)}")
    return value


_Int = Annotated[int, BeforeValidator(_whole)]
_IntOrNone = Annotated[int | None, BeforeValidator(_whole)]
_Device = Annotated[str, BeforeValidator(_device)]


class RunConfig(BaseModel):
    """Everything that defines one training run. Units: learning rate per step, time in seconds,
    memory in MiB, epochs in gradient evaluations / N.

    Precision: ``dtype`` is the parameters' and the data's dtype; ``autocast`` (``"bfloat16"`` or
    None) runs the forward passes under ``torch.autocast`` with float32 parameters; ``accumulate``
    (None = the parameters' dtype, ``"float32"`` or ``"float64"``, never bf16) is the dtype in
    which the full-batch gradient and loss are summed across chunks. ``gdlab train --precision
    float32|float64|bf16`` sets ``dtype`` and ``autocast`` together.

    Types are strict (no bool for a number, no string for a number); an int field takes an
    integral float, a float field an int. A RunConfig is valid from construction (GdlabError
    naming the field and the fix otherwise) and immutable: :meth:`replace` makes a changed,
    re-validated copy.

    Each field is one run option: its type, default, bounds (``ge``, ``gt``, ``lt``) or choices
    (a Literal), its meaning (``description``: CLI help and docs) and its CLI flag:
    ``--name-with-dashes`` unless ``json_schema_extra["flag"]`` says otherwise (None: no flag).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    task: str = Field("digits", min_length=1, description=(
        "registered task or local-data preset (mnist-mlp, fashion-cnn, cifar10-resnet), see 'gdlab list'"))
    data: str | None = Field(None, description=(
        "local data, overrides task: .npz (X, y, optional X_test, y_test), a directory with X.npy/y.npy, "
        ".csv (last column = label), an MNIST-style IDX or CIFAR-10 binary directory, or a preset name"))
    data_dir: str | None = Field(None, description="where local data sets and presets live (unset: $GDLAB_DATA_DIR)")
    mmap: bool = Field(False, description="memory-map X.npy (no copy, no standardisation; read chunk by chunk)")
    n_samples: _IntOrNone = Field(None, ge=2, description=(
        "rows to generate (synthetic tasks) or draw (real sets); unset: the task's default"))
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held-out fraction of the rows")
    standardize: bool | None = Field(None, description="standardise inputs (training statistics); unset: task default")
    model: str | None = Field(None, description=(
        "model spec, e.g. mlp:64-128-10:relu, cnn:lenet, lstm:32x1 (see 'gdlab list'); unset: the task's default"))
    loss: str | None = Field(None, description="mse, cross_entropy or bce; unset: the task's default")
    optimizer: str = Field("gd", min_length=1, description=(
        "update rule: gd, momentum, nesterov, adam, adamw, rmsprop, adagrad, linesearch"))
    lr: float = Field(0.1, gt=0.0, description="learning rate; the initial step guess for linesearch",
                      json_schema_extra={"fix": "use a positive learning rate such as --lr 0.1"})
    optimizer_params: dict[Any, Any] = Field(default_factory=dict, json_schema_extra={"flag": None}, description=(
        "other hyper-parameters of the optimizer, e.g. {momentum: 0.9}; on the command line --momentum X "
        "and --opt KEY=VALUE (repeatable), e.g. --opt betas=[0.9,0.99]"))
    regime: str = Field("full", min_length=1, description="full, minibatch or stochastic")
    batch_size: _IntOrNone = Field(None, ge=1, description="rows per minibatch step, at most N; unset: 32")
    last_batch: Literal["keep", "drop"] = Field("keep", description="the partial last batch of an epoch")
    chunk_size: _IntOrNone = Field(None, ge=1, description=(
        "rows per forward/backward pass; unset: the fastest (else the largest) chunk within the memory budget"))
    memory_budget_mb: float = Field(256.0, gt=0.0, description="activation memory per chunk, MiB")
    l1: float = Field(0.0, ge=0.0, description="L1 penalty coefficient (part of the objective)")
    l2: float = Field(0.0, ge=0.0, description="L2 penalty coefficient: (l2/2)*||w||^2 (part of the objective)")
    layer_mode: Literal["train", "eval"] = Field("train", description=(
        "BatchNorm/Dropout during gradients: train (per-chunk statistics) or eval, see docs/concepts.md"))
    steps: _IntOrNone = Field(None, ge=0, description=f"maximum updates; unset: {DEFAULT_STEPS} if no other budget")
    max_epochs: float | None = Field(None, gt=0.0, json_schema_extra={"flag": "--epochs"},
                                     description="maximum gradient evaluations / N")
    loss_tol: float | None = Field(None, description="stop when the training objective is <= this")
    grad_tol: float | None = Field(None, ge=0.0, description="stop when the full gradient norm <= this (full regime)")
    time_budget_s: float | None = Field(None, gt=0.0, json_schema_extra={"flag": "--time-budget"},
                                        description="maximum training seconds")
    divergence_factor: float = Field(1e6, gt=1.0, json_schema_extra={"flag": None}, description=(
        "the run diverged when the loss exceeds this x the initial loss"))
    schedule: str | None = Field(None, description=(
        "lr schedule: constant, step:EVERY:GAMMA, exp:GAMMA, cosine[:T[:MIN]], warmup:W[+REST]"))
    clip_norm: float | None = Field(None, gt=0.0, description="clip the gradient to this global 2-norm")
    clip_value: float | None = Field(None, gt=0.0, description="clamp each gradient entry to [-X, X]")
    nonfinite_policy: Literal["rollback", "stop", "raise"] = Field("rollback", description=(
        "on NaN/Inf or an exploding loss: roll back and cut the lr, stop, or raise"))
    rollback_lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="lr multiplier after a rollback")
    max_rollbacks: _Int = Field(10, ge=0, description="rollbacks before the run stops as diverged")
    health_every: _IntOrNone = Field(None, ge=1, description=(
        "per-tensor gradient health every K steps; unset: off (1 in gdlab stability)"))
    vanishing_ratio: float = Field(1e-3, gt=0.0, lt=1.0, description="vanishing: grad norm < this x the output layer's")
    exploding_factor: float = Field(1e3, gt=1.0, description="exploding: a gradient norm > this x its first value")
    sharpness_every: _IntOrNone = Field(None, ge=1, description=(
        "top Hessian eigenvalue every K steps; unset: off (about 20 per run in gdlab stability)"))
    sharpness_iters: _Int = Field(20, ge=2, description="Lanczos iterations (HVPs) per sharpness estimate")
    eval_every: _IntOrNone = Field(None, ge=1, description="steps between test evaluations; unset: about 50 per run")
    log_every: _IntOrNone = Field(None, ge=1, description="steps between history records; unset: about 1000 per run")
    seed: _Int = Field(0, ge=0, description="seed of data, initialisation and sample order")
    data_seed: _IntOrNone = Field(None, ge=0, description="seed of the data and the train/test split only; unset: seed")
    deterministic: bool = Field(False, description=(
        "torch deterministic algorithms (a nondeterministic kernel raises), cuDNN autotuning off, "
        "Python/NumPy/torch generators seeded; recorded in environment"))
    checkpoint_every: _IntOrNone = Field(None, ge=1, description="checkpoint to --out DIR every K steps and at the end")
    compile: Literal["auto", "on", "off"] = Field("auto", description=(
        "compiled fast path for full-batch runs: auto (when it repays compiling), on, off"))
    device: _Device = Field("cpu", description=(
        "cpu, cuda, cuda:K, mps or auto (CUDA, else MPS, else CPU); the resolved device is recorded in "
        "environment.device"))
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter and data dtype")
    autocast: Literal["bfloat16"] | None = Field(None, json_schema_extra={"flag": None}, description=(
        "bfloat16: forward passes under torch.autocast with float32 parameters (CLI: --precision bf16)"))
    accumulate: Literal["float32", "float64"] | None = Field(None, description=(
        "dtype the chunk gradients and losses are summed in; unset: the parameters' dtype"))

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    def __setattr__(self, name: str, value: Any = None) -> None:
        """Fields never change (pydantic's frozen error would be a multi-line ValidationError);
        the error is the one the dataclass RunConfig raised."""
        raise FrozenInstanceError(f"config field '{name}' cannot change; use config.replace({name}=...)")

    __delattr__ = __setattr__  # deleting a field would change it too

    @model_validator(mode="before")
    @classmethod
    def _default_budget(cls, data: Any) -> Any:
        """A run with no budget at all (steps, max_epochs, time_budget_s) takes DEFAULT_STEPS."""
        if isinstance(data, dict) and all(data.get(k) is None for k in ("steps", "max_epochs", "time_budget_s")):
            return {**data, "steps": DEFAULT_STEPS}
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        """Rules between fields (ValueError: translated by _config_error like any other)."""
        if self.schedule not in (None, "constant") and self.optimizer == "linesearch":
            raise ValueError("optimizer 'linesearch' chooses its own step each iteration, so it takes no "
                             "schedule; drop --schedule or use another optimizer")
        if self.autocast is not None and self.dtype != "float32":
            raise ValueError(f"autocast 'bfloat16' needs float32 parameters, but dtype is '{self.dtype}'; "
                             "use --precision bf16 (float32 parameters) or drop autocast")
        if self.accumulate == "float32" and self.dtype == "float64":
            raise ValueError("accumulate 'float32' would round float64 gradients; use --accumulate float64 or drop it")
        if self.grad_tol is not None and self.regime != "full":
            raise ValueError("grad_tol tests the full-batch gradient norm, which only regime 'full' computes; "
                             "drop --grad-tol or use --regime full")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a config from a mapping; unknown keys are errors (with suggestions)."""
        if not isinstance(data, dict):
            raise GdlabError(f"a run config must be a mapping of field: value, got {type(data).__name__}")
        # a YAML key need not be a string (1: 2); as a keyword it must be, and is unknown anyway
        return cls(**{str(key): value for key, value in data.items()})

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` applied, validated like any new config."""
        return type(self)(**{**dict(self), **changes})

    def validate(self) -> RunConfig:  # type: ignore[override]
        """The config itself: it was validated at construction and cannot change since."""
        return self

    @property
    def data_seed_value(self) -> int:
        """The seed of data generation and the train/test split: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def config_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of the config."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_OPS = {"ge": ">=", "gt": ">", "lt": "<"}  # the bounds a field may declare, as messages write them
_BOUNDS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than": "lt"}  # pydantic's names
_PROBLEMS = {"int_type": "must be an integer", "float_type": "must be a finite number",
             "finite_number": "must be a finite number", "bool_type": "must be true or false",
             "string_type": "must be a non-empty string", "string_too_short": "must be a non-empty string"}
_short = reprlib.Repr()  # a value in a message: bounded, so the message stays one short line
_short.maxstring = _short.maxother = 60


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    return (f"config field '{name}' must be one of {', '.join(choices)}, got {_short.repr(value)}"
            f"{did_you_mean(str(value), choices)}")


def _config_error(exc: ValidationError) -> GdlabError:
    """The one-line GdlabError for the first problem pydantic found: an unknown key first (a
    typo explains the rest), else the first field in order, else a rule between fields."""
    error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    kind, value = error["type"], error["input"]
    if kind == "value_error":  # our own validators wrote the whole message
        return GdlabError(error["ctx"]["error"])
    name, names = str(error["loc"][0]), list(RunConfig.model_fields)
    if kind == "extra_forbidden":
        return GdlabError(f"unknown config field '{name}'{did_you_mean(name, names)}; valid fields: {', '.join(names)}")
    info = RunConfig.model_fields[name]
    if kind == "literal_error":
        return GdlabError(_one_of(name, value, _choices(info)))
    if kind in _BOUNDS:
        bound = _BOUNDS[kind]
        fix = (info.json_schema_extra or {}).get("fix")
        problem = f"must be {_OPS[bound]} {error['ctx'][bound]}, got {_short.repr(value)}" + (f"; {fix}" if fix else "")
    elif kind == "dict_type":
        problem = "must be a mapping such as {momentum: 0.9}"
    elif kind in ("bool_type", "string_type") and info.default is None:
        problem = f"must be a {_kind(info).__name__} or null, got {_short.repr(value)}"
    else:
        problem = f"{_PROBLEMS.get(kind, 'is invalid')}, got {_short.repr(value)}"
    return GdlabError(f"config field '{name}' {problem}")


def _kind(info: FieldInfo) -> Any:
    """A field's type without ``| None``: int, float, str, bool, dict or a Literal."""
    args = get_args(info.annotation)
    kind = next(a for a in args if a is not type(None)) if type(None) in args else info.annotation
    return dict if get_origin(kind) is dict else kind


def _choices(info: FieldInfo) -> tuple[str, ...]:
    kind = _kind(info)
    return get_args(kind) if get_origin(kind) is Literal else ()


def _flag(name: str, info: FieldInfo) -> str | None:
    return (info.json_schema_extra or {}).get("flag", "--" + name.replace("_", "-"))  # type: ignore[union-attr]


def _default(info: FieldInfo) -> str:
    """A default as a YAML file writes it; the meaning says what null (unset) stands for."""
    value = info.get_default(call_default_factory=True)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_arguments() -> dict[str, tuple[str, dict[str, Any]]]:
    """field -> (flag, ``add_argument`` keywords) for every field with a CLI flag. The default
    is None, "not given", so that a config file's value, else the field's default, applies."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, info in RunConfig.model_fields.items():
        flag, kind = _flag(name, info), _kind(info)
        if flag is None:
            continue
        default = "" if info.default is None else f" (default {_default(info)})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{info.description}{default}"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if info.default is None else "store_true"
        elif kind in (int, float):
            kwargs["type"] = kind
        elif _choices(info):
            kwargs["choices"] = _choices(info)
        out[name] = (flag, kwargs)
    return out


def _type_text(info: FieldInfo) -> str:
    """int, float, str, bool, mapping or the choices; then the bounds; then whether null is valid."""
    kind = _kind(info)
    parts = [" | ".join(_choices(info)) or ("mapping" if kind is dict else kind.__name__)]
    parts += [f"{op} {getattr(m, bound)}" for m in info.metadata for bound, op in _OPS.items() if hasattr(m, bound)]
    parts += ["non-empty"] * any(isinstance(m, annotated_types.MinLen) for m in info.metadata)
    return ", ".join(parts) + (" or null" if info.default is None else "")


def options_table() -> str:
    """The markdown table of every run option (docs/cli.md holds it verbatim; a test checks)."""
    flags = flag_arguments()
    rows = ["| option | CLI flag | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, info in RunConfig.model_fields.items():
        flag, kwargs = flags.get(name, (None, {}))
        shown = "-" if flag is None else f"`{flag}`" + (
            f" / `--no-{flag[2:]}`" if kwargs.get("action") is argparse.BooleanOptionalAction else "")
        cells = [f"`{name}`", shown, _type_text(info), f"`{_default(info)}`", str(info.description)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


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
    if data is not None and not isinstance(data, dict):
        raise GdlabError(f"config file '{path}' must hold a mapping of field: value at the top level")
    return {} if data is None else data

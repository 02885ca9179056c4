"""The one config schema: a CLI flag, a YAML key and a Python keyword are three routes to the same
validated RunConfig field, every route refuses the same bad values with one line, and docs/cli.md
shows the schema's own options table.

The valid and invalid values below are written per field, independently of the schema's
declarations, so that a bound or a type changed by mistake in the schema is caught; a new field
fails ``test_every_field_has_test_values`` until it gets its values here.
"""

import contextlib
import io
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.cli import build_parser, config_from_args, main
from gdlab.config import DEFAULT_STEPS, RunConfig, flag_arguments, load_config_file, options_table
from gdlab.errors import GdlabError

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
FIELDS = list(RunConfig.model_fields)
FLAGS = flag_arguments()
PARSER = build_parser()
# Set on the command line through other options: --momentum/--opt, --precision; or files only.
NO_FLAG = {"optimizer_params", "divergence_factor", "autocast"}

text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)
names = text.filter(bool)


def ints(low: int) -> st.SearchStrategy:
    return st.integers(low, 10**9)


def floats(low: float | None = None, high: float | None = None, *, open_low=False, open_high=False):
    return st.floats(low, high, exclude_min=open_low, exclude_max=open_high, allow_nan=False, allow_infinity=False)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


VALID = {
    "task": names, "data": maybe(names), "data_dir": maybe(names), "mmap": st.booleans(),
    "n_samples": maybe(ints(2)), "test_fraction": floats(0.0, 1.0, open_high=True),
    "standardize": maybe(st.booleans()), "model": maybe(names), "loss": maybe(names), "optimizer": names,
    "lr": floats(0.0, open_low=True),
    "optimizer_params": st.dictionaries(st.sampled_from(["momentum", "eps"]), floats(0.0, 1.0), max_size=2),
    "regime": names, "batch_size": maybe(ints(1)), "last_batch": st.sampled_from(["keep", "drop"]),
    "chunk_size": maybe(ints(1)), "memory_budget_mb": floats(0.0, open_low=True), "l1": floats(0.0),
    "l2": floats(0.0), "layer_mode": st.sampled_from(["train", "eval"]), "steps": maybe(ints(0)),
    "max_epochs": maybe(floats(0.0, open_low=True)), "loss_tol": maybe(floats()), "grad_tol": maybe(floats(0.0)),
    "time_budget_s": maybe(floats(0.0, open_low=True)), "divergence_factor": floats(1.0, open_low=True),
    "schedule": maybe(names), "clip_norm": maybe(floats(0.0, open_low=True)),
    "clip_value": maybe(floats(0.0, open_low=True)),
    "nonfinite_policy": st.sampled_from(["rollback", "stop", "raise"]),
    "rollback_lr_factor": floats(0.0, 1.0, open_low=True, open_high=True), "max_rollbacks": ints(0),
    "health_every": maybe(ints(1)), "vanishing_ratio": floats(0.0, 1.0, open_low=True, open_high=True),
    "exploding_factor": floats(1.0, open_low=True), "sharpness_every": maybe(ints(1)),
    "sharpness_iters": ints(2), "eval_every": maybe(ints(1)), "log_every": maybe(ints(1)), "seed": ints(0),
    "data_seed": maybe(ints(0)), "deterministic": st.booleans(), "checkpoint_every": maybe(ints(1)),
    "compile": st.sampled_from(["auto", "on", "off"]),
    "device": st.sampled_from(["cpu", "cuda", "mps", "auto"]) | st.integers(0, 15).map("cuda:{}".format),
    "dtype": st.sampled_from(["float32", "float64"]), "autocast": maybe(st.just("bfloat16")),
    "accumulate": maybe(st.sampled_from(["float32", "float64"])),
}

not_a_number = text | st.booleans() | st.none() | st.lists(st.integers(), max_size=2)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def bad_ints(low: int, optional: bool = False) -> st.SearchStrategy:
    wrong = not_a_number.filter(lambda v: not (optional and v is None))
    return st.integers(max_value=low - 1) | floats().filter(lambda v: not v.is_integer()) | not_finite | wrong


def bad_floats(low=None, high=None, *, open_low=False, open_high=False, optional=False) -> st.SearchStrategy:
    out = not_finite | not_a_number.filter(lambda v: not (optional and v is None))
    if low is not None:  # the bound itself (and -0.0 for 0.0) only where it is excluded
        out |= floats(high=low).filter(lambda v: v < low or open_low)
    if high is not None:
        out |= floats(low=high).filter(lambda v: v > high or open_high)
    return out


def bad_choices(*choices: str) -> st.SearchStrategy:
    return text.filter(lambda v: v not in choices) | st.integers() | st.lists(text, max_size=2)


bad_names = st.just("") | st.integers() | st.booleans() | st.lists(text, max_size=2)
not_str = st.integers() | st.booleans() | st.lists(text, max_size=2)
not_bool = st.integers() | text | st.lists(st.booleans(), max_size=2)
INVALID = {
    "task": bad_names, "data": not_str, "data_dir": not_str, "mmap": not_bool | st.none(),
    "n_samples": bad_ints(2, True), "test_fraction": bad_floats(0.0, 1.0, open_high=True), "standardize": not_bool,
    "model": not_str, "loss": not_str, "optimizer": bad_names, "lr": bad_floats(0.0, open_low=True),
    "optimizer_params": st.lists(text, max_size=2) | text | st.integers(), "regime": bad_names,
    "batch_size": bad_ints(1, True), "last_batch": bad_choices("keep", "drop"), "chunk_size": bad_ints(1, True),
    "memory_budget_mb": bad_floats(0.0, open_low=True), "l1": bad_floats(0.0), "l2": bad_floats(0.0),
    "layer_mode": bad_choices("train", "eval"), "steps": bad_ints(0, True),
    "max_epochs": bad_floats(0.0, open_low=True, optional=True), "loss_tol": bad_floats(optional=True),
    "grad_tol": bad_floats(0.0, optional=True), "time_budget_s": bad_floats(0.0, open_low=True, optional=True),
    "divergence_factor": bad_floats(1.0, open_low=True), "schedule": not_str,
    "clip_norm": bad_floats(0.0, open_low=True, optional=True), "clip_value": bad_floats(0.0, open_low=True, optional=True),
    "nonfinite_policy": bad_choices("rollback", "stop", "raise"),
    "rollback_lr_factor": bad_floats(0.0, 1.0, open_low=True, open_high=True), "max_rollbacks": bad_ints(0),
    "health_every": bad_ints(1, True), "vanishing_ratio": bad_floats(0.0, 1.0, open_low=True, open_high=True),
    "exploding_factor": bad_floats(1.0, open_low=True), "sharpness_every": bad_ints(1, True),
    "sharpness_iters": bad_ints(2), "eval_every": bad_ints(1, True), "log_every": bad_ints(1, True),
    "seed": bad_ints(0), "data_seed": bad_ints(0, True), "deterministic": not_bool | st.none(),
    "checkpoint_every": bad_ints(1, True), "compile": bad_choices("auto", "on", "off"),
    "device": bad_choices("cpu", "cuda", "mps", "auto").filter(
        lambda v: not (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())),
    "dtype": bad_choices("float32", "float64"), "autocast": bad_choices("bfloat16"),
    "accumulate": bad_choices("float32", "float64"),
}
def argv_for(name: str, value) -> list[str] | None:
    """The flags that give `value` to field `name` ([] leaves the field unset, or false); None when
    the command line cannot express the value (a non-string for a string option)."""
    flag, kwargs = FLAGS[name]
    action = kwargs.get("action")
    if value is None or (value is False and action == "store_true"):
        return []
    if action and isinstance(value, bool):
        return [flag] if value else [f"--no-{flag[2:]}"]
    if not action and "type" not in kwargs and not isinstance(value, str):
        return None
    if isinstance(value, str) and "type" in kwargs and parses(kwargs["type"], value):
        return None  # on the command line the text "5" is the number 5
    return [f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}"]


def parses(kind: type, value: str) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def from_yaml(path: Path, name: str, value) -> RunConfig:
    path.write_text(yaml.safe_dump({name: value}), encoding="utf-8")
    return RunConfig.from_dict(load_config_file(path))


def from_cli(*argv: str) -> RunConfig:
    return config_from_args(PARSER.parse_args(["train", *argv]))


def test_every_field_has_test_values():
    assert list(VALID) == FIELDS and list(INVALID) == FIELDS
    assert set(FIELDS) - set(FLAGS) == NO_FLAG


@pytest.mark.parametrize("name", FIELDS)
def test_a_valid_value_is_the_same_by_every_route(tmp_path_factory, name):
    """Python keyword, YAML key, CLI flag and a config file given to the CLI: the same config."""
    path = tmp_path_factory.mktemp("valid") / "run.yaml"

    @settings(max_examples=15, deadline=None)
    @given(VALID[name])
    def check(value):
        expected = RunConfig(**{name: value})
        want = DEFAULT_STEPS if name == "steps" and value is None else value  # the default budget
        got = getattr(expected, name)
        assert got == want and type(got) is type(want)
        routes = [from_yaml(path, name, value), from_cli("--config", str(path))]
        if name not in NO_FLAG:
            routes.append(from_cli(*argv_for(name, value)))
        for config in routes:
            assert config == expected and type(getattr(config, name)) is type(got)

    check()


@pytest.mark.parametrize("name", FIELDS)
def test_an_invalid_value_is_refused_by_every_route(tmp_path_factory, name):
    """Out of bounds, wrong type or unknown choice: the same one-line GdlabError from a keyword and
    from a YAML key, and exit status 2 with one line on stderr from the CLI."""
    path = tmp_path_factory.mktemp("invalid") / "run.yaml"

    @settings(max_examples=10, deadline=None)
    @given(INVALID[name])
    def check(value):
        with pytest.raises(GdlabError) as keyword:
            RunConfig(**{name: value})
        message = str(keyword.value)
        assert message.startswith(f"config field '{name}' ") and "\n" not in message and len(message) < 400
        with pytest.raises(GdlabError) as file:
            from_yaml(path, name, value)
        assert str(file.value) == message
        argv = None if name in NO_FLAG or value is None else argv_for(name, value)  # no flag = unset
        if argv is None:
            return
        with pytest.raises(GdlabError):  # refused before main() could train anything
            from_cli(*argv)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            assert main(["train", *argv]) == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gdlab: error: ") and out.getvalue() == ""
        assert f"'{name}'" in lines[0] or FLAGS[name][0] in lines[0]

    check()


def test_the_options_without_their_own_flag_and_the_number_conversions():
    """optimizer_params and autocast come from --momentum/--opt and --precision; an int is a
    float where a float is due, an integral float an int where an int is due (not on the CLI)."""
    config = from_cli("--momentum", "0.5", "--opt", "betas=[0.9,0.99]", "--precision", "bf16")
    assert config.optimizer_params == {"momentum": 0.5, "betas": [0.9, 0.99]} and config.autocast == "bfloat16"
    assert RunConfig(lr=1).lr == 1.0 and type(RunConfig(lr=1).lr) is float
    for name in (name for name, (_, kwargs) in FLAGS.items() if kwargs.get("type") is int):
        assert type(RunConfig(**{name: 7.0}).to_dict()[name]) is int, name
    with pytest.raises(GdlabError, match="'steps' must be an integer"):
        RunConfig(steps=True)
    with pytest.raises(GdlabError, match="invalid int value"):
        from_cli("--steps", "3.0")


def test_the_train_help_lists_every_flag_with_its_meaning():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(out.getvalue().split())
    for name, (flag, _) in FLAGS.items():
        assert flag in help_text and " ".join(RunConfig.model_fields[name].description.split()[:4]) in help_text


def test_the_docs_hold_the_generated_options_table():
    """docs/cli.md shows options_table() verbatim between its markers: regenerate it with
    ``python -c "from gdlab.config import options_table; print(options_table(), end='')"``."""
    doc = DOC.read_text(encoding="utf-8")
    section = doc.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert section == options_table()
    assert all(f"| `{name}` |" in section for name in FIELDS)

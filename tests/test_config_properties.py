"""Property-based tests: no input makes the config parser or the config-file reader raise
anything but the project's own GdlabError."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.config import RunConfig, load_config_file
from gdlab.errors import GdlabError

FIELDS = list(RunConfig.model_fields)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), values, max_size=6))
def test_any_mapping_is_a_valid_config_or_a_gdlab_error(data):
    """RunConfig.from_dict on arbitrary keys and values validates or raises GdlabError."""
    try:
        RunConfig.from_dict(data)
    except GdlabError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([".yaml", ".json", ".yml"]))
def test_any_file_is_a_mapping_or_a_gdlab_error(tmp_path_factory, raw, suffix):
    """Arbitrary bytes in a config file: a mapping comes back, or GdlabError."""
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_bytes(raw)
    try:
        assert isinstance(load_config_file(path), dict)
    except GdlabError:
        pass


def test_a_config_is_valid_from_construction_and_immutable():
    """RunConfig(lr=-1.0) used to construct silently and fail later; now construction validates,
    fields cannot be reassigned, and config.replace re-validates the copy."""
    import dataclasses

    import pytest

    from gdlab.config import RunConfig
    from gdlab.errors import GdlabError

    with pytest.raises(GdlabError, match="'lr' must be > 0"):
        RunConfig(lr=-1.0)
    with pytest.raises(GdlabError, match="nonfinite_policy"):
        RunConfig(nonfinite_policy="oops")
    config = RunConfig(lr=0.5)
    assert config.steps == 100  # the default stopping rule, filled in at construction
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 2.0
    with pytest.raises(GdlabError, match="'lr' must be > 0"):
        config.replace(lr=0.0)
    assert config.replace(lr=0.2).lr == 0.2 and config.lr == 0.5

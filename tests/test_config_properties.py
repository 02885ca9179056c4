"""Property-based tests: no input makes the config parser or the config-file reader raise
anything but the project's own GdlabError."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.config import RunConfig, load_config_file
from gdlab.errors import GdlabError

FIELDS = list(RunConfig.__dataclass_fields__)
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

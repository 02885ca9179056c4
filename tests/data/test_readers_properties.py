"""Property-based tests: whatever bytes a data file holds, the readers either return a data set
or raise GdlabError, never another exception (reference: the GdlabError contract of
gdlab.errors; the inputs are arbitrary bytes, plus bytes behind each format's real signature so
that parsing goes past the first check)."""

import gzip
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gdlab.data import load_csv, load_npy_pair, load_npz, read_idx  # noqa: E402
from gdlab.errors import GdlabError  # noqa: E402

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def only_gdlab_errors(call) -> None:
    try:
        call()
    except GdlabError as error:
        assert "\n" not in str(error)


idx_like = st.builds(
    lambda code, ndim, dims, body: bytes([0, 0, code, ndim]) + struct.pack(f">{len(dims)}I", *dims) + body,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x01]),
    st.integers(0, 4),
    st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), max_size=4),
    st.binary(max_size=64),
)


@SETTINGS
@given(data=st.binary(max_size=256) | idx_like | idx_like.map(gzip.compress) | st.binary(max_size=64).map(
    lambda b: b"\x1f\x8b" + b
))
def test_read_idx_raises_only_gdlab_errors(tmp_path, data):
    path = tmp_path / "f.idx"
    path.write_bytes(data)
    only_gdlab_errors(lambda: read_idx(path))


csv_text = st.text(alphabet="0123456789.,-+eE;\t\n\r \"abnif", max_size=200).map(str.encode)
csv_cell = st.sampled_from(["1", "2", "0", "-1", "1.5", "", "nan", "cat", "dog", " 3 ", "1e400", "\"a\nb\""])
# Rectangular tables of mixed cells reach the parsing, typing and splitting stages.
csv_table = st.integers(1, 4).flatmap(
    lambda width: st.lists(st.lists(csv_cell, min_size=width, max_size=width), max_size=12)
).map(lambda rows: "\n".join(",".join(row) for row in rows).encode())


@SETTINGS
@given(data=st.binary(max_size=256) | csv_text | csv_table)
def test_load_csv_raises_only_gdlab_errors(tmp_path, data):
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    only_gdlab_errors(lambda: load_csv(path))
    only_gdlab_errors(lambda: load_csv(path, label_column=0, header=False, task_type="regression"))


def npz_bytes(X: np.ndarray, y: np.ndarray, tmp_path) -> bytes:
    np.savez(tmp_path / "valid.npz", X=X, y=y)
    return (tmp_path / "valid.npz").read_bytes()


@SETTINGS
@given(
    data=st.binary(max_size=256)
    | st.binary(max_size=256).map(lambda b: b"PK\x03\x04" + b)
    | st.binary(max_size=256).map(lambda b: b"\x93NUMPY" + b),
    cut=st.integers(0, 2000),
    flip=st.integers(0, 2000),
)
def test_load_npz_raises_only_gdlab_errors(tmp_path, data, cut, flip):
    path = tmp_path / "f.npz"
    path.write_bytes(data)
    only_gdlab_errors(lambda: load_npz(path))
    # A real archive cut short or with one byte changed exercises the zip and .npy parsers.
    valid = bytearray(npz_bytes(np.arange(12.0).reshape(6, 2), np.arange(6) % 2, tmp_path))
    valid[flip % len(valid)] ^= 0xFF
    path.write_bytes(bytes(valid[: len(valid) - cut % len(valid)]))
    only_gdlab_errors(lambda: load_npz(path))


npy_header = st.builds(
    lambda shape, descr, body: (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", 118)
        + f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".ljust(117).encode()
        + b"\n"
        + body
    ),
    st.tuples(st.integers(0, 10**12), st.integers(0, 5)) | st.just(()) | st.tuples(st.integers(0, 9)),
    st.sampled_from(["<f4", "<f8", ">f8", "|u1", "|O", "<c16", "|V4"]),
    st.binary(max_size=128),
)


@SETTINGS
@given(data=st.binary(max_size=128) | npy_header, mmap=st.booleans())
def test_load_npy_pair_raises_only_gdlab_errors(tmp_path, data, mmap):
    (tmp_path / "X.npy").write_bytes(data)
    np.save(tmp_path / "y.npy", np.arange(3) % 2)
    only_gdlab_errors(lambda: load_npy_pair(tmp_path, mmap=mmap))

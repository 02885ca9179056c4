"""Tests for gdlab.data.formats.npz.load_npz: round trips, type inference, and every bad file."""

import numpy as np
import pytest
import torch

from gdlab.data import load_npz
from gdlab.errors import GdlabError


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.reshape(len(a), -1).T[::-1])]


@pytest.fixture
def classification_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.arange(60) % 3
    path = tmp_path / "blobs.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


def test_round_trip_keeps_values_and_infers_classification(classification_file):
    """Integer y -> classification with max + 1 classes; unstandardised values equal the saved ones.
    Reference: the arrays passed to numpy.savez (rows compared after sorting, since the split
    shuffles)."""
    path, X, y = classification_file
    ds = load_npz(path, standardize=False, test_fraction=0.25)
    assert ds.name == "blobs" and ds.task_type == "classification" and ds.num_classes == 3
    assert (ds.n_train, ds.n_test) == (45, 15)
    assert torch.bincount(ds.y_test).tolist() == [5, 5, 5]
    X_all = torch.cat([ds.X_train, ds.X_test]).numpy()
    y_all = torch.cat([ds.y_train, ds.y_test]).numpy()
    saved = np.column_stack([X.astype(np.float32), y])
    assert np.array_equal(sorted_rows(np.column_stack([X_all, y_all])), sorted_rows(saved))


def test_same_seed_same_split_and_standardised_by_train_statistics(classification_file):
    """Determinism (reference: torch.equal) and train-split mean 0 / std 1 (numpy float64)."""
    path, _, _ = classification_file
    a, b = load_npz(path, seed=4), load_npz(path, seed=4)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    X = a.X_train.numpy().astype(np.float64)
    assert np.allclose(X.mean(axis=0), 0.0, atol=1e-6) and np.allclose(X.std(axis=0), 1.0, atol=1e-6)


def test_float_targets_infer_regression_with_column_shape(tmp_path):
    """Float 1-D y -> regression with y of shape (N, 1); reference: the saved targets."""
    X = np.arange(10.0)[:, None]
    y = 2.0 * X[:, 0] + 1.0
    np.savez(tmp_path / "line.npz", X=X, y=y)
    ds = load_npz(tmp_path / "line.npz", standardize=False, test_fraction=0.0)
    assert ds.task_type == "regression" and ds.y_train.shape == (10, 1)
    assert np.array_equal(ds.y_train.numpy()[:, 0], y.astype(np.float32))
    assert np.array_equal(ds.X_train.numpy(), X.astype(np.float32))


def test_given_test_split_is_used_as_is(tmp_path):
    """X_test/y_test in the file are the test split; reference: the saved arrays."""
    X, y = np.eye(4), np.array([0, 1, 0, 1])
    X_test, y_test = np.ones((2, 4)), np.array([1, 2])
    np.savez(tmp_path / "s.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load_npz(tmp_path / "s.npz", standardize=False, name="mine")
    assert ds.name == "mine" and ds.num_classes == 3
    assert np.array_equal(ds.X_train.numpy(), X) and np.array_equal(ds.X_test.numpy(), X_test)
    assert ds.y_test.tolist() == [1, 2]


def test_explicit_task_type_overrides_inference(tmp_path):
    """Integral float labels may be classification; integer targets may be regression."""
    np.savez(tmp_path / "f.npz", X=np.eye(4), y=np.array([0.0, 1.0, 1.0, 0.0]))
    assert load_npz(tmp_path / "f.npz", task_type="classification").y_train.dtype == torch.int64
    np.savez(tmp_path / "i.npz", X=np.eye(4), y=np.array([3, 1, 4, 1]))
    assert load_npz(tmp_path / "i.npz", task_type="regression").y_train.shape == (3, 1)
    np.savez(tmp_path / "h.npz", X=np.eye(4), y=np.array([0.5, 1.0, 1.0, 0.0]))
    with pytest.raises(GdlabError, match="non-integer"):
        load_npz(tmp_path / "h.npz", task_type="classification")
    with pytest.raises(GdlabError, match="did you mean 'regression'"):
        load_npz(tmp_path / "h.npz", task_type="regresion")


def write_valid(path):
    np.savez(path, X=np.random.default_rng(0).normal(size=(100, 5)), y=np.arange(100) % 2)


def make_missing(path):
    return path.parent / "does_not_exist.npz"


def make_truncated(path):
    write_valid(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_corrupted_compressed(path):
    np.savez_compressed(path, X=np.random.default_rng(0).normal(size=(100, 5)), y=np.arange(100) % 2)
    data = bytearray(path.read_bytes())
    for i in range(100, 400):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def make_corrupted_stored(path):
    write_valid(path)
    data = bytearray(path.read_bytes())
    for i in range(300, 340):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def make_not_a_zip(path):
    path.write_text("X,y\n1,2\n")
    return path


def make_empty(path):
    path.write_bytes(b"")
    return path


def make_npy(path):
    np.save(path.with_suffix(".npy"), np.zeros((3, 2)))
    return path.with_suffix(".npy")


def make_missing_y(path):
    np.savez(path, X=np.zeros((3, 2)), labels=np.zeros(3))
    return path


def make_only_x_test(path):
    np.savez(path, X=np.zeros((3, 2)), y=np.zeros(3, dtype=int), X_test=np.zeros((1, 2)))
    return path


def make_object_array(path):
    np.savez(path, X=np.array([[1.0, "a"], [2.0, None]], dtype=object), y=np.array([0, 1]))
    return path


def make_nan(path):
    X = np.ones((10, 2))
    X[7, 1] = np.nan
    np.savez(path, X=X, y=np.arange(10) % 2)
    return path


def make_length_mismatch(path):
    np.savez(path, X=np.zeros((10, 2)), y=np.zeros(9, dtype=int))
    return path


def make_1d_x(path):
    np.savez(path, X=np.zeros(10), y=np.zeros(10, dtype=int))
    return path


def make_3d_y(path):
    np.savez(path, X=np.zeros((10, 2)), y=np.zeros((10, 2, 2)))
    return path


def make_strings(path):
    np.savez(path, X=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    return path


def make_negative_label(path):
    np.savez(path, X=np.zeros((10, 2)), y=np.arange(10) - 1)
    return path


def make_directory(path):
    path.mkdir()
    return path


BAD_FILES = [
    (make_missing, "does not exist"),
    (make_directory, "directory"),
    (make_truncated, "truncated or corrupted"),
    (make_corrupted_compressed, "corrupted"),
    (make_corrupted_stored, "corrupted"),
    (make_not_a_zip, "not an .npz archive"),
    (make_empty, "not an .npz archive"),
    (make_npy, "not an .npz"),
    (make_missing_y, "no array 'y'"),
    (make_only_x_test, "X_test"),
    (make_object_array, "Python objects"),
    (make_nan, "NaN"),
    (make_length_mismatch, "10 rows but y has 9"),
    (make_1d_x, "shape"),
    (make_3d_y, "shape"),
    (make_strings, "dtype"),
    (make_negative_label, "labels"),
]


@pytest.mark.parametrize("make, problem", BAD_FILES, ids=[f.__name__[5:] for f, _ in BAD_FILES])
def test_bad_file_raises_one_line_error_naming_the_problem(tmp_path, make, problem):
    """Each bad file raises GdlabError (not a numpy/zipfile error) with a one-line message that
    names the problem; reference: the defect written into the file."""
    path = make(tmp_path / "data.npz")
    with pytest.raises(GdlabError) as info:
        load_npz(path)
    message = str(info.value)
    assert "\n" not in message and problem in message


def test_nan_is_reported_at_its_row_in_the_file(tmp_path):
    """The NaN written at row 7 is reported at row 7, before the split reorders rows."""
    with pytest.raises(GdlabError, match="first at row 7"):
        load_npz(make_nan(tmp_path / "nan.npz"))


def test_float64_runs_read_npz_and_csv_without_a_float32_detour(tmp_path):
    """0.1 is not a float32 number: a float64 run must see the file's 0.1 exactly (the reader
    converts from float64 to the run's dtype once), a float32 run float32(0.1)."""
    from gdlab.config import RunConfig
    from gdlab.run import prepare

    npz = tmp_path / "a.npz"
    np.savez(npz, X=np.full((4, 1), 0.1), y=np.full((4, 1), 0.1))
    csv = tmp_path / "a.csv"
    csv.write_text("x,y\n0.1,0.1\n0.1,0.2\n0.1,0.3\n0.1,0.4\n")
    for path in (npz, csv):
        common = dict(data=str(path), standardize=False, test_fraction=0.0, model="linear", loss="mse", steps=1)
        x64 = prepare(RunConfig(dtype="float64", **common)).data.X_train[0, 0].item()
        x32 = prepare(RunConfig(**common)).data.X_train[0, 0].item()
        assert x64 == 0.1
        assert x32 == float(np.float32(0.1))

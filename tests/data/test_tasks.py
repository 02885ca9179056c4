"""Tests for gdlab.data.tasks: the registry, load_task's shapes, determinism and argument checks."""

import numpy as np
import pytest
import torch

from gdlab.data import TASKS, Dataset, TaskSpec, list_tasks, load_task
from gdlab.data.tasks import clear_task_cache
from gdlab.errors import GdlabError

# name: (n_total, input_shape, task_type, classes or output_dim, image_shape); the sizes are
# those of the documented data sets and of the brief's defaults (the reference).
EXPECTED = {
    "linreg": (100, (1,), "regression", 1, None),
    "logistic": (400, (2,), "classification", 2, None),
    "spirals": (600, (2,), "classification", 2, None),
    "adding": (1000, (30, 2), "regression", 1, None),
    "sine": (1000, (20, 1), "regression", 1, None),
    "digits": (1797, (64,), "classification", 10, (1, 8, 8)),
    "iris": (150, (4,), "classification", 3, None),
    "wine": (178, (13,), "classification", 3, None),
    "breast_cancer": (569, (30,), "classification", 2, None),
    "diabetes": (442, (10,), "regression", 1, None),
    "mnist1d": (4000, (40,), "classification", 10, (1, 40)),
}

# Small sizes keep the determinism tests fast; None means the task's default.
FAST_N = {"mnist1d": 200}


def tensors(ds: Dataset) -> list[torch.Tensor]:
    return [ds.X_train, ds.y_train, ds.X_test, ds.y_test]


def test_registry_lists_every_task_with_valid_defaults():
    """list_tasks mirrors TASKS; reference: the task table of the brief (EXPECTED)."""
    assert [spec.name for spec in list_tasks()] == list(TASKS)
    assert set(TASKS) == set(EXPECTED)
    for spec in list_tasks():
        assert isinstance(spec, TaskSpec)
        assert spec.task_type == EXPECTED[spec.name][2]
        assert spec.default_loss in ("mse", "cross_entropy", "bce")
        assert spec.description and "\n" not in spec.description
        is_real = spec.name in ("digits", "iris", "wine", "breast_cancer", "diabetes")
        assert (spec.default_n_samples is None) == is_real
    assert TASKS["linreg"].standardize is False
    assert TASKS["adding"].default_model == "lstm:32x1" and TASKS["sine"].default_model == "gru:32x1"
    assert TASKS["digits"].default_model == "mlp:64-128-10:relu"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_task_has_documented_shapes_dtypes_and_labels(name):
    """Shapes, dtypes and label ranges; reference: EXPECTED and a 0.2 split rounded up for the test
    side (scikit-learn's rule)."""
    n, input_shape, task_type, k, image_shape = EXPECTED[name]
    ds = load_task(name)
    n_test = int(np.ceil(0.2 * n))
    assert (ds.n_train, ds.n_test) == (n - n_test, n_test)
    assert ds.input_shape == input_shape and ds.X_test.shape[1:] == input_shape
    assert ds.X_train.dtype == torch.float32 and ds.task_type == task_type
    assert ds.image_shape == image_shape and ds.name == name and ds.output_dim == k
    if task_type == "classification":
        assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (ds.n_train,)
        assert ds.num_classes == k
        labels = torch.cat([ds.y_train, ds.y_test])
        assert set(labels.unique().tolist()) == set(range(k))
    else:
        assert ds.y_train.dtype == torch.float32 and ds.y_train.shape == (ds.n_train, k)
    if image_shape is not None:
        assert int(np.prod(image_shape)) == ds.X_train.shape[1]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_same_seed_gives_bit_identical_tensors_and_another_seed_differs(name):
    """Determinism; reference: torch.equal between two independent calls."""
    n = FAST_N.get(name)
    first = load_task(name, seed=5, n_samples=n)
    clear_task_cache()  # built again, not read from the cache
    again = load_task(name, seed=5, n_samples=n)
    other = load_task(name, seed=6, n_samples=n)
    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(again)))
    assert not torch.equal(first.X_train, other.X_train)


def test_a_cached_load_is_a_copy_the_caller_may_change():
    """The second load of the same arguments comes from the cache, yet changing the first one's
    tensors in place leaves it as built (reference: a load after clearing the cache)."""
    first = load_task("mnist1d", seed=2, n_samples=100)
    first.X_train.zero_()
    first.y_test.fill_(3)
    cached = load_task("mnist1d", seed=2, n_samples=100)
    clear_task_cache()
    built = load_task("mnist1d", seed=2, n_samples=100)
    assert all(torch.equal(a, b) for a, b in zip(tensors(cached), tensors(built)))
    assert built.X_train.abs().sum() > 0


def test_mnist1d_leaves_global_random_state_alone_and_honours_odd_sizes():
    """mnist1d seeds numpy's global generator internally; reference: numpy.random.get_state before
    and after. n_samples not a multiple of 10 still gives exactly n samples."""
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ds = load_task("mnist1d", n_samples=205, test_fraction=0.2)
    assert np.array_equal(np.random.get_state()[1], before)
    assert ds.n_train + ds.n_test == 205


def test_n_samples_sets_the_total_and_subsamples_real_sets_stratified():
    """n_samples is train + test; on iris, 30 of 150 keeps 10 per class; reference: bincount."""
    ds = load_task("spirals", n_samples=50, test_fraction=0.2)
    assert (ds.n_train, ds.n_test) == (40, 10)
    iris = load_task("iris", n_samples=30, test_fraction=0.2)
    labels = torch.cat([iris.y_train, iris.y_test])
    assert torch.bincount(labels).tolist() == [10, 10, 10]
    assert torch.bincount(iris.y_test).tolist() == [2, 2, 2]


def test_zero_test_fraction_and_float64_dtype():
    """test_fraction=0 gives an empty test split; dtype=float64 applies to X and regression y."""
    ds = load_task("sine", test_fraction=0.0, dtype=torch.float64)
    assert ds.n_test == 0 and ds.n_train == 1000
    assert ds.X_train.dtype == torch.float64 and ds.y_train.dtype == torch.float64


def test_linreg_task_keeps_raw_x_so_least_squares_recovers_3x_plus_2():
    """The linreg task is not standardised; reference: numpy.linalg.lstsq on n = 2000 samples."""
    ds = load_task("linreg", n_samples=2000, test_fraction=0.0, dtype=torch.float64)
    X, y = ds.X_train.numpy(), ds.y_train.numpy()[:, 0]
    (slope, intercept), *_ = np.linalg.lstsq(np.hstack([X, np.ones_like(X)]), y, rcond=None)
    assert slope == pytest.approx(3.0, abs=0.2) and intercept == pytest.approx(2.0, abs=0.25)


def test_adding_task_target_matches_the_marked_values():
    """Reference: the sum of the channel-0 values where channel 1 is 1, recomputed with numpy."""
    ds = load_task("adding", n_samples=200, dtype=torch.float64)
    X, y = ds.X_train.numpy(), ds.y_train.numpy()[:, 0]
    assert np.array_equal((X[:, :, 1] == 1).sum(axis=1), np.full(len(X), 2))
    assert np.allclose((X[:, :, 0] * X[:, :, 1]).sum(axis=1), y, rtol=0, atol=1e-12)


def test_unknown_task_name_suggests_the_closest():
    """Reference: the brief's example, 'digts' -> 'digits'."""
    with pytest.raises(GdlabError, match="did you mean 'digits'") as info:
        load_task("digts")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_samples": 1}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": True}, "n_samples"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"dtype": torch.int64}, "dtype"),
        ({"standardize": "yes"}, "standardize"),
    ],
)
def test_bad_arguments_raise_errors_naming_the_argument(kwargs, field):
    """Each bad argument raises GdlabError whose one-line message names it and its allowed range."""
    with pytest.raises(GdlabError, match=field) as info:
        load_task("logistic", **kwargs)
    assert "\n" not in str(info.value)


def test_real_set_rejects_more_samples_than_it_has():
    """iris has 150 samples (reference: scikit-learn's documentation); asking for 151 is an error."""
    with pytest.raises(GdlabError, match="n_samples=151.*150"):
        load_task("iris", n_samples=151)
    assert load_task("iris", n_samples=150).n_train == 120


def test_sequence_tasks_refuse_standardisation():
    """Sequence inputs are never standardised; asking for it explicitly is an error, not ignored."""
    with pytest.raises(GdlabError, match="standardi"):
        load_task("adding", standardize=True)
    assert load_task("adding", n_samples=10, standardize=False).n_train == 8

"""Real data sets that need no download: scikit-learn's shipped sets and MNIST-1D built locally."""

from __future__ import annotations

import random

import numpy as np

from gdlab.errors import unknown_name

# Names of scikit-learn loaders and their keyword arguments. diabetes is loaded unscaled:
# sklearn's default pre-scales the features with statistics of the whole set (test rows
# included); gdlab standardises with training statistics instead.
SKLEARN_LOADERS: dict[str, tuple[str, dict[str, bool]]] = {
    "digits": ("load_digits", {}),
    "iris": ("load_iris", {}),
    "wine": ("load_wine", {}),
    "breast_cancer": ("load_breast_cancer", {}),
    "diabetes": ("load_diabetes", {"scaled": False}),
}

MNIST1D_CLASSES = 10
MNIST1D_LENGTH = 40


def load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one of scikit-learn's bundled sets (digits, iris, wine, breast_cancer, diabetes).

    Returns X: (N, d) float64 and y: (N,) int64 labels, or (N, 1) float64 targets for diabetes.
    """
    # Imported here, not at module level: importing scikit-learn costs about a second.
    from sklearn import datasets

    if name not in SKLEARN_LOADERS:
        raise unknown_name("bundled data set", name, SKLEARN_LOADERS)
    loader, kwargs = SKLEARN_LOADERS[name]
    X, y = getattr(datasets, loader)(return_X_y=True, **kwargs)
    X = np.asarray(X, dtype=np.float64)
    if np.issubdtype(np.asarray(y).dtype, np.integer):
        return X, np.asarray(y, dtype=np.int64)
    return X, np.asarray(y, dtype=np.float64).reshape(-1, 1)


def make_mnist1d(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D (Greydanus 2020) locally with the `mnist1d` package; nothing is downloaded.

    mnist1d builds its own train and test arrays; they are concatenated here (the caller re-splits
    them) and the first `n` of the shuffled samples are kept, since the package makes an equal
    number per class and so needs a multiple of 10. Its signals are centred and scaled by the
    package over the whole set. Returns X: (n, 40) float64, y: (n,) int64 in 0..9.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = -(-n // MNIST1D_CLASSES) * MNIST1D_CLASSES
    args.seed = seed
    # mnist1d seeds and draws from the global `random` and `numpy.random` states; restore them so
    # loading a data set does not change anyone else's random stream.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)[:n]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)[:n]
    return X, y

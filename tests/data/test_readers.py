"""Tests for the readers of gdlab.data.formats: IDX, MNIST, CIFAR-10 binary, CSV, .npy pairs (in
memory and memory-mapped), and of torch Datasets (gdlab.data.sources), and every bad input each
reader refuses.

Reference for the values read: the arrays the tests themselves wrote in each format."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gdlab.data import (
    DATA_DIR_ENV,
    data_dir,
    dataset_from_torch,
    load_cifar10_dir,
    load_csv,
    load_mnist_dir,
    load_npy_pair,
    read_idx,
)
from gdlab.data.split import fit_standardization
from gdlab.engine import full_batch_loss_and_grad
from gdlab.errors import GdlabError

IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1", gz: bool = False) -> Path:
    data = idx_bytes(array, dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, seed: int = 0):
    """Four IDX files of random 28x28 images; returns (train images, labels, test images, labels)."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    )
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(MNIST_NAMES, arrays):
        write_idx(directory / (stem + (".gz" if gz else "")), array, gz=gz)
    return arrays


def write_cifar(folder: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0):
    """The six CIFAR-10 binary batch files with few records; returns (pixels, labels) for the
    training batches concatenated and for the test batch."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for file, n in [(f"data_batch_{i}.bin", per_batch) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / file).write_bytes(np.column_stack([labels, pixels]).tobytes())
        out[file] = (pixels, labels)
    train = [out[f"data_batch_{i}.bin"] for i in range(1, 6)]
    return (
        (np.concatenate([p for p, _ in train]), np.concatenate([l for _, l in train])),
        out["test_batch.bin"],
    )


def one_line_error(call, *fragments):
    with pytest.raises(GdlabError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_data_dir_prefers_explicit_then_environment(monkeypatch, tmp_path):
    """Explicit beats $GDLAB_DATA_DIR; neither set is an error naming both fixes."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert data_dir(tmp_path / "cli") == tmp_path / "cli"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    one_line_error(data_dir, "no data directory", "--data-dir", DATA_DIR_ENV)


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    """Every IDX type code, gzipped or not, reads back the array written (reference: the array,
    cast to the type the file declares)."""
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == "u1":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a.idx{'.gz' if gz else ''}", array, dtype, gz)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype).newbyteorder("=")
    assert np.array_equal(out, array)


def test_read_idx_detects_gzip_by_signature_not_name(tmp_path):
    """A gzipped file without .gz and a plain file named .gz both read (reference: the array)."""
    array = np.arange(10, dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "plain.gz", array)), array)
    assert np.array_equal(read_idx(write_idx(tmp_path / "zipped", array, gz=True)), array)


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda: idx_bytes(np.zeros((5, 4), np.uint8))[:-3], ("truncated", "(5, 4)", "17 bytes follow")),
        (lambda: idx_bytes(np.zeros((5, 4), np.uint8))[:9], ("truncated", "2 dimensions")),
        (lambda: b"\x00\x00", ("truncated", "4-byte IDX header")),
        (lambda: idx_bytes(np.zeros(3, np.uint8)) + b"junk", ("4 bytes after",)),
        (lambda: b"\x12\x34\x08\x01" + b"\x00" * 8, ("not an IDX file", "12 34 08 01")),
        (lambda: b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", ("unknown IDX data type 0x07",)),
        (lambda: gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12], ("corrupt or truncated gzip",)),
        (lambda: gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:10] + b"\xff" * 30, ("gzip",)),
    ],
    ids=["short-data", "short-header", "tiny", "trailing", "bad-magic", "bad-type", "gz-truncated", "gz-corrupt"],
)
def test_read_idx_refuses_malformed_files(tmp_path, make, fragments):
    """Each malformed IDX file is a one-line GdlabError naming the file and the problem."""
    path = tmp_path / "bad.idx"
    path.write_bytes(make())
    one_line_error(lambda: read_idx(path), str(path), *fragments)


def test_read_idx_missing_file(tmp_path):
    one_line_error(lambda: read_idx(tmp_path / "nope"), "does not exist")


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_dir_values_and_metadata(tmp_path, gz):
    """Pixels / 255 flattened and labels as written; the files' own split; image_shape for CNNs.
    Reference: the arrays written to the IDX files."""
    train_x, train_y, test_x, test_y = write_mnist(tmp_path, gz=gz)
    ds = load_mnist_dir(tmp_path)
    assert (ds.name, ds.task_type, ds.num_classes, ds.image_shape) == ("mnist", "classification", 10, (1, 28, 28))
    assert ds.X_train.shape == (30, 784) and ds.X_train.dtype == torch.float32
    assert np.allclose(ds.X_train.numpy(), train_x.reshape(30, -1) / 255.0, atol=1e-7)
    assert np.allclose(ds.X_test.numpy(), test_x.reshape(10, -1) / 255.0, atol=1e-7)
    assert ds.y_train.tolist() == train_y.tolist() and ds.y_test.tolist() == test_y.tolist()
    assert float(ds.X_train.min()) >= 0.0 and float(ds.X_train.max()) <= 1.0


def test_load_mnist_dir_accepts_dotted_names_and_fashion(tmp_path):
    """Mirror names like train-images.idx3-ubyte are found; fashion names the data set and its
    classes."""
    write_mnist(tmp_path, gz=False)
    for stem in MNIST_NAMES:
        (tmp_path / stem).rename(tmp_path / stem.replace("-idx", ".idx"))
    ds = load_mnist_dir(tmp_path, fashion=True)
    assert ds.name == "fashion-mnist" and "Ankle boot" in ds.description


def test_load_mnist_dir_subsample_and_standardize(tmp_path):
    """n_samples keeps a stratified subset of training rows (reference: the written rows);
    standardize uses training statistics (reference: split.fit_standardization)."""
    train_x, _, _, _ = write_mnist(tmp_path, n_train=40)
    ds = load_mnist_dir(tmp_path, n_samples=20, seed=3)
    assert ds.n_train == 20 and ds.n_test == 10
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [2] * 10
    written = {row.tobytes() for row in (train_x.reshape(40, -1) / 255.0).astype(np.float32)}
    assert all(row.tobytes() in written for row in ds.X_train.numpy())
    raw = load_mnist_dir(tmp_path)
    std = load_mnist_dir(tmp_path, standardize=True)
    mean, sd = fit_standardization(raw.X_train.numpy())
    assert np.allclose(std.X_train.numpy(), (raw.X_train.numpy() - mean) / sd, atol=1e-5)
    assert np.allclose(std.X_test.numpy(), (raw.X_test.numpy() - mean) / sd, atol=1e-5)


def test_load_mnist_dir_lists_exactly_the_missing_files(tmp_path):
    """The message names the directory, each missing file and not the present ones, and where
    to download them."""
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    message = one_line_error(
        lambda: load_mnist_dir(tmp_path),
        str(tmp_path),
        "t10k-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "yann.lecun.com/exdb/mnist",
    )
    assert "train-images" not in message and "t10k-labels" not in message


def test_load_mnist_dir_refuses_mismatched_and_corrupt_files(tmp_path):
    """Image/label count mismatch, a label outside 0..9, and a label file in the image's place."""
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8), gz=True)
    one_line_error(lambda: load_mnist_dir(tmp_path), "30 images", "29 labels")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(30, 12, np.uint8), gz=True)
    one_line_error(lambda: load_mnist_dir(tmp_path), "label 12")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(30, np.uint8), gz=True)
    one_line_error(lambda: load_mnist_dir(tmp_path), "train-images-idx3-ubyte.gz", "not uint8 images")


@pytest.mark.parametrize("nested", [True, False])
def test_load_cifar10_dir_values(tmp_path, nested):
    """Labels and pixels / 255 of every record, in file order, from cifar-10-batches-bin/ or the
    folder itself. Reference: the records written."""
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    (train_x, train_y), (test_x, test_y) = write_cifar(folder)
    ds = load_cifar10_dir(tmp_path)
    assert (ds.name, ds.num_classes, ds.image_shape) == ("cifar10", 10, (3, 32, 32))
    assert (ds.n_train, ds.n_test) == (15, 4) and ds.X_train.shape[1] == 3072
    assert np.allclose(ds.X_train.numpy(), train_x / 255.0, atol=1e-7)
    assert np.allclose(ds.X_test.numpy(), test_x / 255.0, atol=1e-7)
    assert ds.y_train.tolist() == train_y.tolist() and ds.y_test.tolist() == test_y.tolist()
    assert "airplane" in ds.description


def test_cifar10_refuses_bad_sizes_labels_and_missing_batches(tmp_path):
    """Size not a multiple of 3073, a label byte > 9, a missing batch (named)."""
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(folder)
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    one_line_error(lambda: load_cifar10_dir(tmp_path), "data_batch_3.bin", "3073")
    write_cifar(folder)
    data = bytearray(batch.read_bytes())
    data[3073] = 55
    batch.write_bytes(bytes(data))
    one_line_error(lambda: load_cifar10_dir(tmp_path), "label 55", "record 1")
    write_cifar(folder)
    (folder / "test_batch.bin").unlink()
    message = one_line_error(lambda: load_cifar10_dir(tmp_path), "test_batch.bin", str(folder))
    assert "data_batch_1" not in message


def test_cifar10_python_version_is_never_unpickled(tmp_path):
    """Only cifar-10-batches-py present: the error says to get the binary version; the pickle
    (here a file that would run code if unpickled) is never opened."""
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    (py / "batches.meta").write_bytes(b"")
    one_line_error(lambda: load_cifar10_dir(tmp_path), "Python (pickled)", "binary version", "never unpickles")


def test_cifar10_archive_not_extracted_and_nothing_present(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b")
    one_line_error(lambda: load_cifar10_dir(tmp_path), "not extracted", "tar xzf")
    one_line_error(
        lambda: load_cifar10_dir(tmp_path / "empty"), "data_batch_1.bin", "test_batch.bin", "cifar-10-binary"
    )


def test_csv_with_header_string_labels_by_name(tmp_path):
    """Header detected, label column by name, class names sorted to 0..K-1 and recorded.
    Reference: the values written."""
    path = tmp_path / "flowers.csv"
    path.write_text("length,species,width\n1.5,setosa,0.5\n2.5,virginica,1\n3,versicolor,-2e1\n4,setosa,7\n")
    ds = load_csv(path, label_column="species", test_fraction=0.0, standardize=False)
    assert ds.name == "flowers" and ds.task_type == "classification" and ds.num_classes == 3
    assert ds.X_train.tolist() == [[1.5, 0.5], [2.5, 1.0], [3.0, -20.0], [4.0, 7.0]]
    assert ds.y_train.tolist() == [0, 2, 1, 0]
    assert "0=setosa, 1=versicolor, 2=virginica" in ds.description


def test_csv_without_header_label_by_index(tmp_path):
    """No header detected when the first row is numeric; integer labels mean classification;
    label column 0 by index; tab delimiter."""
    path = tmp_path / "d.tsv"
    path.write_text("1\t0.1\t0.2\n0\t0.3\t0.4\n\n2\t0.5\t0.6\n")
    ds = load_csv(path, label_column=0, delimiter="\t", test_fraction=0.0, standardize=False)
    assert ds.num_classes == 3 and ds.y_train.tolist() == [1, 0, 2]
    assert np.allclose(ds.X_train.numpy(), [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])


def test_csv_float_labels_mean_regression_and_explicit_header(tmp_path):
    """Decimal labels -> regression (N, 1); header=True keeps numeric column names as a header."""
    path = tmp_path / "r.csv"
    path.write_text("1,2,3\n0.0,1.0,2.5\n1.0,2.0,4.5\n")
    ds = load_csv(path, header=True, test_fraction=0.0, standardize=False)
    assert ds.task_type == "regression" and ds.y_train[:, 0].tolist() == [2.5, 4.5]
    assert ds.X_train.tolist() == [[0.0, 1.0], [1.0, 2.0]]


def test_csv_split_and_standardize_like_npz(tmp_path):
    """The split and standardisation follow load_npz: train mean 0, std 1 (numpy reference)."""
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(50, 3))
    rows = "\n".join(",".join(f"{v:.6f}" for v in x) + f",{i % 2}" for i, x in enumerate(X))
    path = tmp_path / "s.csv"
    path.write_text(rows + "\n")
    ds = load_csv(path, test_fraction=0.2, seed=1)
    assert (ds.n_train, ds.n_test) == (40, 10)
    Xt = ds.X_train.numpy().astype(np.float64)
    assert np.allclose(Xt.mean(axis=0), 0, atol=1e-5) and np.allclose(Xt.std(axis=0), 1, atol=1e-5)


@pytest.mark.parametrize(
    "content, options, fragments",
    [
        ("a,b,y\n1,2,0\n3,oops,1\n", {}, ("row 3", "'b' (column 2)", "oops", "not a number")),
        ("1,2,0\n3,,1\n", {}, ("row 2", "column 2", "empty")),
        ("a,b,y\n1,2,0\n3,4\n", {}, ("row 3 has 2 columns", "row 1 has 3")),
        ("", {}, ("is empty",)),
        ("   \n\n", {}, ("is empty",)),
        ("a,b,y\n1,nan,0\n", {}, ("row 2", "'b'", "NaN or infinite")),
        ("a,b,y\n1,1e300,0\n", {}, ("row 2", "too large for float32")),
        ("a,b,y\n1,2,0\n3,4,-1\n", {}, ("row 3", "label '-1' is negative")),
        ("a,b,y\n1,2,0\n3,4,1.5\n", {"task_type": "classification"}, ("row 3", "not a class")),
        ("a,b,y\n1,2,cat\n", {"task_type": "regression"}, ("row 2", "'cat' is not a number")),
        ("a,b,y\n1,2,\n", {}, ("row 2", "label is empty")),
        ("a,b,y\n", {}, ("header row but no data rows",)),
        ("a;b;y\n1;2;0\n", {}, ("one column", "';'")),
        ("a,b,y\n1,2,0\n", {"label_column": "why"}, ("no column 'why'", "did you mean 'y'")),
        ("a,b,y\n1,2,0\n", {"label_column": 5}, ("out of range", "3 columns")),
        ('a,b,y\n1,"2,0\n', {}, ("row 2 has 2 columns",)),
    ],
    ids=[
        "non-numeric", "empty-cell", "ragged", "empty", "blank", "nan", "huge", "negative-label",
        "fractional-label", "string-target", "empty-label", "header-only", "wrong-delimiter",
        "unknown-column", "index-range", "open-quote",
    ],
)
def test_csv_refuses_bad_content(tmp_path, content, options, fragments):
    """Each bad CSV is a one-line GdlabError naming the file, and the row and column where one
    applies."""
    path = tmp_path / "bad.csv"
    path.write_text(content)
    one_line_error(lambda: load_csv(path, **options), str(path), *fragments)


def test_csv_refuses_non_utf8_and_binary(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("a,b,y\n1,2,caf\u00e9\n".encode("latin-1"))
    one_line_error(lambda: load_csv(path), "not UTF-8", "0xe9")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    one_line_error(lambda: load_csv(path), str(path))


def write_pair(directory: Path, X: np.ndarray, y: np.ndarray, prefix: str = "", **test) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"{prefix}X.npy", X)
    np.save(directory / f"{prefix}y.npy", y)
    for key, value in test.items():
        np.save(directory / f"{prefix}{key}.npy", value)
    return directory


def test_npy_pair_in_memory_with_and_without_test_files(tmp_path):
    """In memory: values as saved (directory, X.npy path and prefix forms), split and
    standardisation as load_npz. Reference: the saved arrays."""
    X, y = np.arange(40.0).reshape(20, 2), np.arange(20) % 2
    write_pair(tmp_path / "a", X, y, X_test=np.ones((3, 2)), y_test=np.array([0, 1, 1]))
    ds = load_npy_pair(tmp_path / "a", standardize=False)
    assert ds.name == "a" and np.array_equal(ds.X_train.numpy(), X) and ds.y_test.tolist() == [0, 1, 1]
    write_pair(tmp_path / "b", X, y.astype(np.float64), prefix="train_")
    for source in (tmp_path / "b" / "train_", tmp_path / "b" / "train_X.npy"):
        ds = load_npy_pair(source, test_fraction=0.25)
        assert ds.name == "train" and ds.task_type == "regression" and (ds.n_train, ds.n_test) == (15, 5)
        assert np.allclose(ds.X_train.numpy().mean(axis=0), 0, atol=1e-6)


def mapping_of(address: int) -> str | None:
    """The file mapped at `address` in this process, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) == 6 else ""
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_npy_pair_mmap_shares_the_file_mapping(tmp_path):
    """With mmap the tensors' memory is the mapping of X.npy itself (reference: the kernel's
    /proc/self/maps); the split is the last ceil(f*N) rows; writes stay private to the process
    (copy-on-write), so the file on disk is unchanged."""
    X = np.arange(120, dtype=np.float32).reshape(30, 4)
    write_pair(tmp_path, X, np.arange(30) % 3)
    ds = load_npy_pair(tmp_path, mmap=True, test_fraction=0.2)
    x_file = os.path.realpath(tmp_path / "X.npy")
    assert os.path.realpath(mapping_of(ds.X_train.data_ptr())) == x_file
    assert os.path.realpath(mapping_of(ds.X_test.data_ptr())) == x_file
    assert ds.X_train.dtype == torch.float32 and (ds.n_train, ds.n_test) == (24, 6)
    assert np.array_equal(ds.X_train.numpy(), X[:24]) and np.array_equal(ds.X_test.numpy(), X[24:])
    assert ds.y_test.tolist() == (np.arange(24, 30) % 3).tolist()
    ds.X_train[0, 0] = -1.0
    assert np.load(tmp_path / "X.npy")[0, 0] == 0.0


def test_npy_pair_mmap_uses_test_files_and_refuses_what_would_copy(tmp_path):
    """X_test.npy is used when present; standardize, non-float and Fortran-ordered X refused."""
    X = np.arange(40, dtype=np.float64).reshape(10, 4)
    write_pair(tmp_path, X, np.arange(10.0), X_test=X[:2] + 0.5, y_test=np.zeros(2))
    ds = load_npy_pair(tmp_path, mmap=True)
    assert ds.task_type == "regression" and ds.X_train.dtype == torch.float64
    assert np.array_equal(ds.X_test.numpy(), X[:2] + 0.5) and ds.n_train == 10
    one_line_error(lambda: load_npy_pair(tmp_path, mmap=True, standardize=True), "standardize", "mmap")
    write_pair(tmp_path / "i", X.astype(np.int32), np.arange(10))
    one_line_error(lambda: load_npy_pair(tmp_path / "i", mmap=True), "int32", "float32")
    write_pair(tmp_path / "f", np.asfortranarray(X), np.arange(10))
    one_line_error(lambda: load_npy_pair(tmp_path / "f", mmap=True), "Fortran order")


def test_npy_pair_mmap_full_batch_gradient_matches_in_memory(tmp_path):
    """The engine's chunked gradient over a memory-mapped X (file larger than the memory budget,
    so many chunks) equals one autograd pass over the same data held in memory (1e-6)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 32))
    y = rng.integers(0, 3, size=3000)
    write_pair(tmp_path, X, y)
    budget_mb = 0.05
    assert (tmp_path / "X.npy").stat().st_size > 4 * budget_mb * 2**20
    ds = load_npy_pair(tmp_path, mmap=True, test_fraction=0.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    result = full_batch_loss_and_grad(model, F.cross_entropy, ds.X_train, ds.y_train, memory_budget_mb=budget_mb)
    assert result.num_chunks > 4
    chunked = [p.grad.clone() for p in model.parameters()]
    loss = F.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y))
    reference = torch.autograd.grad(loss, list(model.parameters()))
    assert abs(result.loss - float(loss.detach())) < 1e-6
    for g, r in zip(chunked, reference):
        assert torch.allclose(g, r, atol=1e-6, rtol=0)


def test_npy_pair_nan_is_reported_at_its_file_row(tmp_path):
    """In blocks or not, a NaN is reported at its row in X.npy."""
    X = np.zeros((50, 3), dtype=np.float32)
    X[37, 1] = np.nan
    write_pair(tmp_path, X, np.arange(50) % 2)
    one_line_error(lambda: load_npy_pair(tmp_path, mmap=True), "X.npy", "row 37")
    one_line_error(lambda: load_npy_pair(tmp_path), "NaN or Inf", "row 37")


def test_npy_pair_refuses_objects_missing_and_corrupt_files(tmp_path):
    """Object arrays (never unpickled), a missing y.npy, a lone X_test.npy, a truncated file,
    a file that is not .npy."""
    np.save(tmp_path / "X.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.array([0]))
    for mmap in (False, True):
        one_line_error(lambda: load_npy_pair(tmp_path, mmap=mmap), "X.npy", "Python objects")
    (tmp_path / "y.npy").unlink()
    one_line_error(lambda: load_npy_pair(tmp_path), "y.npy", "is missing")
    write_pair(tmp_path, np.ones((4, 2)), np.arange(4), X_test=np.ones((1, 2)))
    one_line_error(lambda: load_npy_pair(tmp_path), "X_test.npy", "y_test.npy", "both or neither")
    (tmp_path / "X_test.npy").unlink()
    data = (tmp_path / "X.npy").read_bytes()
    (tmp_path / "X.npy").write_bytes(data[:-5])
    one_line_error(lambda: load_npy_pair(tmp_path), "X.npy", "truncated or corrupted")
    (tmp_path / "X.npy").write_text("1,2\n")
    one_line_error(lambda: load_npy_pair(tmp_path), "X.npy", "not a .npy file")
    one_line_error(lambda: load_npy_pair(tmp_path / "y.npy"), "not the X.npy file")


def test_dataset_from_torch_tensor_dataset_with_test_split():
    """A TensorDataset's items are stacked in order, across several 1024-item batches.
    Reference: the tensors the TensorDataset wraps."""
    X = torch.randn(2500, 5, dtype=torch.float64)
    y = torch.arange(2500) % 4
    X_test, y_test = torch.randn(7, 5), torch.tensor([0, 1, 2, 3, 0, 1, 5])
    ds = dataset_from_torch(
        torch.utils.data.TensorDataset(X, y), test=torch.utils.data.TensorDataset(X_test, y_test), name="t"
    )
    assert ds.name == "t" and ds.task_type == "classification" and ds.num_classes == 6
    assert torch.equal(ds.X_train, X.float()) and torch.equal(ds.y_train, y)
    assert torch.equal(ds.X_test, X_test) and torch.equal(ds.y_test, y_test)


def test_dataset_from_torch_splits_and_keeps_image_shape():
    """Without `test` the items are split (the union is the original set); (C, H, W) items set
    image_shape; float targets mean regression with (N, 1) targets."""
    X = torch.arange(20 * 3 * 2 * 2, dtype=torch.float32).reshape(20, 3, 2, 2)
    ds = dataset_from_torch(torch.utils.data.TensorDataset(X, torch.arange(20) % 2), test_fraction=0.25)
    assert (ds.n_train, ds.n_test) == (15, 5) and ds.image_shape == (3, 2, 2)
    rows = torch.cat([ds.X_train, ds.X_test])
    assert sorted(rows[:, 0, 0, 0].tolist()) == X[:, 0, 0, 0].tolist()
    reg = dataset_from_torch([(float(i), 2.0 * i) for i in range(10)], test_fraction=0.0)
    assert reg.task_type == "regression" and reg.X_train.shape == (10, 1) and reg.y_train.shape == (10, 1)
    assert reg.y_train[:, 0].tolist() == [2.0 * i for i in range(10)]


def test_dataset_from_torch_refuses_bad_items():
    one_line_error(lambda: dataset_from_torch([torch.zeros(3)] * 4), "not an (input, target) pair")
    one_line_error(lambda: dataset_from_torch([(torch.zeros(3), 0), (torch.zeros(4), 1)]), "cannot stack")
    one_line_error(lambda: dataset_from_torch([(torch.zeros(2), "cat")] * 3), "targets", "str")
    one_line_error(lambda: dataset_from_torch([]), "no items")
    one_line_error(lambda: dataset_from_torch(42), "torch.utils.data.Dataset")

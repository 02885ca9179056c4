"""Tests for gdlab.data.presets (presets on local files, the folders searched, the errors when
files are absent) and gdlab.data.sources.load_data_source (what `--data` accepts).

Reference for values: the small files the tests write; for models: the model zoo building each
preset's default model on that preset's data shapes."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gdlab.data import DATA_DIR_ENV, PRESETS, load_data_source, load_preset, list_presets
from gdlab.data.presets import load_local_data_set
from gdlab.errors import GdlabError
from gdlab.models import build_model

MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_mnist(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0):
    """Four IDX files of 28x28 uint8 images; returns the training images."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(MNIST_NAMES, arrays):
        data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
        (directory / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return arrays[0]


def write_cifar(folder: Path, per_batch: int = 2) -> np.ndarray:
    """Six CIFAR-10 binary batches of `per_batch` records; returns the training labels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        y = (np.arange(per_batch) + k) % 10
        pixels = np.full((per_batch, 3072), 10 * k, dtype=np.uint8)
        (folder / name).write_bytes(np.column_stack([y.astype(np.uint8), pixels]).tobytes())
        labels.append(y)
    return np.concatenate(labels[:5])


def one_line_error(call, *fragments):
    with pytest.raises(GdlabError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_registry_names_models_and_losses():
    """The three presets with the models and loss the brief names."""
    assert [p.name for p in list_presets()] == ["mnist-mlp", "fashion-cnn", "cifar10-resnet"]
    assert PRESETS["mnist-mlp"].default_model == "mlp:784-256-10:relu"
    assert PRESETS["fashion-cnn"].default_model == "cnn:lenet"
    assert PRESETS["cifar10-resnet"].default_model == "cnn:resnet"
    assert {p.default_loss for p in PRESETS.values()} == {"cross_entropy"}


@pytest.mark.parametrize(
    "preset, layout",
    [("mnist-mlp", "mnist"), ("mnist-mlp", "MNIST/raw"), ("mnist-mlp", ""),
     ("fashion-cnn", "fashion-mnist"), ("fashion-cnn", "FashionMNIST/raw")],
)
def test_mnist_presets_read_each_documented_layout(tmp_path, preset, layout):
    """Files in each documented folder are found (torchvision's MNIST/raw included)."""
    images = write_mnist(tmp_path / layout if layout else tmp_path, gz=layout != "MNIST/raw")
    ds = load_preset(preset, tmp_path)
    assert ds.n_train == 20 and ds.n_test == 10 and ds.image_shape == (1, 28, 28)
    assert np.allclose(ds.X_train.numpy(), images.reshape(20, -1) / 255.0, atol=1e-7)
    assert ds.name == ("fashion-mnist" if preset == "fashion-cnn" else "mnist")


def test_fashion_preset_never_reads_the_data_directory_root(tmp_path):
    """MNIST files at the root are not taken for Fashion-MNIST (same file names)."""
    write_mnist(tmp_path)
    one_line_error(lambda: load_preset("fashion-cnn", tmp_path), "preset 'fashion-cnn'", "fashion-mnist")


def test_cifar_preset_and_environment_variable(tmp_path, monkeypatch):
    """$GDLAB_DATA_DIR is used when no directory is given; CIFAR-10 batches read in file order."""
    labels = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ds = load_preset("cifar10-resnet")
    assert ds.y_train.tolist() == labels.tolist() and ds.image_shape == (3, 32, 32)
    assert torch.allclose(ds.X_train[2:4], torch.full((2, 3072), 10 / 255))


def test_missing_files_error_names_preset_folder_files_and_source(tmp_path):
    """The brief's message: the preset, the folder searched, the exact files, the environment
    variable and where to download them; on one line."""
    message = one_line_error(
        lambda: load_preset("mnist-mlp", tmp_path),
        "preset 'mnist-mlp' needs train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
        f"in '{tmp_path / 'mnist'}'",
        DATA_DIR_ENV,
        "yann.lecun.com/exdb/mnist",
    )
    assert "MNIST/raw" in message
    one_line_error(
        lambda: load_preset("cifar10-resnet", tmp_path),
        "preset 'cifar10-resnet'", "data_batch_5.bin", "test_batch.bin", "kriz/cifar.html",
    )


def test_partial_and_python_only_and_no_directory(tmp_path, monkeypatch):
    """Some files present: only the missing ones are named; CIFAR python version only: the
    binary version is asked for; no data directory at all: both fixes named."""
    write_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    message = one_line_error(
        lambda: load_preset("mnist-mlp", tmp_path), "only part", "t10k-labels-idx1-ubyte.gz", "MNIST/raw"
    )
    assert "train-images" not in message
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    one_line_error(lambda: load_preset("cifar10-resnet", tmp_path), "preset 'cifar10-resnet'", "binary version")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    one_line_error(lambda: load_preset("mnist-mlp"), "preset 'mnist-mlp'", "--data-dir", DATA_DIR_ENV)


def test_unknown_names():
    one_line_error(lambda: load_preset("mnist-mpl"), "unknown preset 'mnist-mpl'", "did you mean 'mnist-mlp'")
    one_line_error(lambda: load_local_data_set("cifar100"), "unknown local data set")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_default_model_builds_on_the_preset_data(tmp_path, preset):
    """Each preset's default model accepts its data's shapes (reference: the model zoo and one
    forward pass producing 10 logits per sample)."""
    write_mnist(tmp_path / "mnist")
    write_mnist(tmp_path / "fashion-mnist")
    write_cifar(tmp_path / "cifar-10-batches-bin")
    ds = load_preset(preset, tmp_path)
    model = build_model(PRESETS[preset].default_model, ds.input_shape, ds.output_dim, image_shape=ds.image_shape)
    with torch.no_grad():
        assert model(ds.X_train[:2]).shape == (2, 10)


def test_load_data_source_dispatches_on_names_extensions_and_directories(tmp_path):
    """Preset and data set names, .npz/.csv/.tsv/.npy files, npy/MNIST/CIFAR directories, an IDX
    file (its folder), and a relative path under the data directory. Reference: the values
    written."""
    write_mnist(tmp_path / "mnist")
    write_cifar(tmp_path / "cifar-10-batches-bin")
    assert load_data_source("mnist-mlp", tmp_path).name == "mnist"
    assert load_data_source("mnist", tmp_path, n_samples=10).n_train == 10
    assert load_data_source("cifar10", tmp_path).n_train == 10
    assert load_data_source(tmp_path / "mnist").name == "mnist"
    assert load_data_source(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").n_test == 10
    assert load_data_source(tmp_path / "cifar-10-batches-bin" / "test_batch.bin").name == "cifar10"
    X, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert load_data_source(tmp_path / "d.npz", test_fraction=0.0, standardize=False).X_train.tolist() == X.tolist()
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y)))
    (tmp_path / "d.tsv").write_text("".join(f"{c}\t{a}\t{b}\n" for (a, b), c in zip(X, y)))
    for file, column in (("d.csv", "y"), ("d.tsv", 0)):
        ds = load_data_source(tmp_path / file, label_column=column, test_fraction=0.0, standardize=False)
        assert ds.X_train.tolist() == X.tolist() and ds.y_train.tolist() == y.tolist()
    (tmp_path / "pair").mkdir()
    np.save(tmp_path / "pair" / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "pair" / "y.npy", y)
    for source in (tmp_path / "pair", tmp_path / "pair" / "X.npy"):
        ds = load_data_source(source, mmap=True, test_fraction=0.2)
        assert ds.X_test.tolist() == X[8:].tolist()
    assert load_data_source("d.npz", tmp_path).n_train == 8


def test_load_data_source_refuses_options_that_do_not_apply(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n")
    one_line_error(lambda: load_data_source(tmp_path / "d.csv", mmap=True), "mmap applies to .npy")
    one_line_error(lambda: load_data_source(tmp_path / "d.csv", n_samples=5), "n_samples")
    one_line_error(lambda: load_data_source("mnist", tmp_path, label_column="y"), "label_column")
    one_line_error(lambda: load_data_source("mnist", tmp_path, task_type="regression"), "classification")
    (tmp_path / "x.dat").write_text("1")
    one_line_error(lambda: load_data_source(tmp_path / "x.dat"), "cannot tell the format")
    one_line_error(lambda: load_data_source("cifar-10"), "did you mean 'cifar10'")
    one_line_error(lambda: load_data_source(tmp_path), "holds no data gdlab can read")
    one_line_error(lambda: load_data_source(""), "data must be")

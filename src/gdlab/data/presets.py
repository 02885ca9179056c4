"""Task presets backed by local files: a real data set read from the data directory, plus the
model and loss to train on it.

The data directory DIR is `--data-dir` or $GDLAB_DATA_DIR. Each data set is looked for in these
folders, in order, and read from the first that holds all of its files (gzipped or not for the
IDX files):

- ``mnist``: DIR/mnist, DIR/MNIST/raw (torchvision's layout), DIR/MNIST, DIR itself.
- ``fashion-mnist``: DIR/fashion-mnist, DIR/fashion_mnist, DIR/FashionMNIST/raw (torchvision's
  layout), DIR/FashionMNIST. Never DIR itself: its files have the same names as MNIST's.
- ``cifar10`` (binary version only): DIR, DIR/cifar10, DIR/cifar-10, each either holding
  cifar-10-batches-bin/ (the extracted archive) or the batch files themselves.

Nothing is downloaded: a missing file is a GdlabError naming the files, the folder to put them
in and where to get them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gdlab.data.dataset import Dataset
from gdlab.data.formats import cifar10, idx
from gdlab.errors import GdlabError, unknown_name

DATA_DIR_ENV = "GDLAB_DATA_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The directory that holds local data sets: `explicit` when given, else $GDLAB_DATA_DIR.

    The directory need not exist yet: the readers name the files missing from it. Raises
    GdlabError when neither is set.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    raise GdlabError(f"no data directory: pass --data-dir DIR or set {DATA_DIR_ENV}")


@dataclass(frozen=True)
class LocalDataSet:
    """A real data set read from files under the data directory."""

    name: str
    title: str
    folders: tuple[str, ...]
    files: tuple[str, ...]
    source: str
    locate: Callable[[Path], tuple[Path, list[str]]]
    read: Callable[..., Dataset]


@dataclass(frozen=True)
class Preset:
    """A named task on a local data set: `loader(data_dir, seed=, n_samples=, standardize=)`
    reads the data; default_model and default_loss are what to train on it."""

    name: str
    description: str
    default_model: str
    default_loss: str
    loader: Callable[..., Dataset]
    data_set: str


def _locate_mnist(folder: Path) -> tuple[Path, list[str]]:
    return folder, idx.find_mnist_files(folder)[1]


LOCAL_DATA_SETS: dict[str, LocalDataSet] = {
    local.name: local
    for local in (
        LocalDataSet(
            name="mnist", title="MNIST", folders=("mnist", "MNIST/raw", "MNIST", ""),
            files=idx.MNIST_FILES, source=idx.MNIST_SOURCE,
            locate=_locate_mnist, read=partial(idx.load_mnist_dir, fashion=False),
        ),
        LocalDataSet(
            name="fashion-mnist", title="Fashion-MNIST",
            folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
            files=idx.MNIST_FILES, source=idx.FASHION_MNIST_SOURCE,
            locate=_locate_mnist, read=partial(idx.load_mnist_dir, fashion=True),
        ),
        LocalDataSet(
            name="cifar10", title="CIFAR-10", folders=("", "cifar10", "cifar-10"),
            files=cifar10.CIFAR10_FILES,
            source="www.cs.toronto.edu/~kriz/cifar.html (the binary version, cifar-10-binary.tar.gz, "
            "extracted)",
            locate=cifar10.find_cifar10_files, read=cifar10.load_cifar10_dir,
        ),
    )
}


def _missing_error(local: LocalDataSet, folders: list[Path], who: str) -> GdlabError:
    """The most useful error when no folder holds all of `local`'s files."""
    for folder in folders:
        where, missing = local.locate(folder)
        if len(missing) < len(local.files):
            return GdlabError(f"{who} found only part of the {local.title} files in '{where}': "
                              f"{', '.join(missing)} missing; place them there (from {local.source})")
    if local.name == "cifar10":
        for folder in folders:
            if cifar10.unreadable_version(folder):
                return GdlabError(cifar10.cifar10_missing_message(folder, who))
    places = [local.locate(folder)[0] for folder in folders]
    also = ", ".join(f"'{place}'" for place in places[1:])
    gzipped = " (gzipped or not)" if local.files == idx.MNIST_FILES else ""
    return GdlabError(f"{who} needs {', '.join(local.files)}{gzipped} in '{places[0]}' (or in {also}; choose "
                      f"the data directory with --data-dir DIR or {DATA_DIR_ENV}); download them from "
                      f"{local.source}")


def _data_root(local: LocalDataSet, explicit: str | os.PathLike | None, who: str) -> Path:
    """data_dir(explicit), or an error saying where `local`'s files belong once one is set."""
    try:
        return data_dir(explicit)
    except GdlabError:
        place = f"DIR/{local.folders[0]}" if local.folders[0] else "DIR"
        raise GdlabError(f"{who} needs a data directory: pass --data-dir DIR or set {DATA_DIR_ENV}, "
                         f"and place {', '.join(local.files)} in {place}") from None


def load_local_data_set(
    name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0, n_samples: int | None = None,
    standardize: bool = False, who: str | None = None,
) -> Dataset:
    """Load the local data set `name` (mnist, fashion-mnist, cifar10) from the first of its
    folders under the data directory that holds all its files (see the module docstring).

    data_dir: the data directory, else $GDLAB_DATA_DIR. seed, n_samples, standardize: as in
    idx.load_mnist_dir. `who` names the caller in error messages (e.g. "preset 'x'").
    """
    if not isinstance(name, str) or name not in LOCAL_DATA_SETS:
        raise unknown_name("local data set", name, LOCAL_DATA_SETS)
    local = LOCAL_DATA_SETS[name]
    who = who or f"data set '{name}'"
    root = _data_root(local, data_dir, who)
    folders = [root / folder if folder else root for folder in local.folders]
    for folder in folders:
        where, missing = local.locate(folder)
        if not missing:
            return local.read(where, seed=seed, n_samples=n_samples, standardize=standardize)
    raise _missing_error(local, folders, who)


def _preset(name: str, data_set: str, description: str, model: str) -> Preset:
    loader = partial(load_local_data_set, data_set, who=f"preset '{name}'")
    return Preset(name=name, description=description, default_model=model, default_loss="cross_entropy",
                  loader=loader, data_set=data_set)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _preset("mnist-mlp", "mnist", "MNIST digits from local IDX files (60000 train / 10000 test, 28x28, "
                "10 classes), MLP 784-256-10", "mlp:784-256-10:relu"),
        _preset("fashion-cnn", "fashion-mnist", "Fashion-MNIST from local IDX files (60000 train / 10000 "
                "test, 28x28, 10 classes), LeNet CNN", "cnn:lenet"),
        _preset("cifar10-resnet", "cifar10", "CIFAR-10 from the local binary version (50000 train / 10000 "
                "test, 3x32x32, 10 classes), small ResNet", "cnn:resnet"),
    )
}


def list_presets() -> list[Preset]:
    """All presets, in registration order."""
    return list(PRESETS.values())


def load_preset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
                n_samples: int | None = None, standardize: bool = False) -> Dataset:
    """Load the data of preset `name` from the data directory (`data_dir`, else
    $GDLAB_DATA_DIR); see the module docstring for where files are looked for.

    seed and n_samples: a stratified subsample of n_samples training samples (the test split is
    kept whole); standardize: per-pixel standardisation instead of [0, 1] scaling. Raises
    GdlabError for an unknown preset and for missing files (naming the files and the folder).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise unknown_name("preset", name, PRESETS)
    return PRESETS[name].loader(data_dir, seed=seed, n_samples=n_samples, standardize=standardize)

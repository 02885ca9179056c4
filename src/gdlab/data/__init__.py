"""Data: the Dataset type, the task registry, readers for local files and presets on them."""

from gdlab.data.dataset import Dataset, validate_dataset
from gdlab.data.formats.cifar10 import load_cifar10_dir
from gdlab.data.formats.csv import load_csv
from gdlab.data.formats.idx import load_mnist_dir, read_idx
from gdlab.data.formats.npy import load_npy_pair
from gdlab.data.formats.npz import load_npz
from gdlab.data.presets import DATA_DIR_ENV, PRESETS, Preset, data_dir, list_presets, load_preset
from gdlab.data.sources import dataset_from_torch, load_data_source
from gdlab.data.tasks import TASKS, TaskSpec, list_tasks, load_task

__all__ = [
    "Dataset", "validate_dataset", "load_task", "list_tasks", "TASKS", "TaskSpec", "load_npz",
    "load_data_source", "PRESETS", "Preset", "list_presets", "load_preset", "DATA_DIR_ENV",
    "data_dir", "dataset_from_torch", "load_cifar10_dir", "load_csv", "load_mnist_dir",
    "load_npy_pair", "read_idx",
]

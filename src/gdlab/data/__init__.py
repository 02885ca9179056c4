"""Data: the Dataset type, the task registry, and readers for local files."""

from gdlab.data.dataset import Dataset, validate_dataset
from gdlab.data.files import load_npz
from gdlab.data.tasks import TASKS, TaskSpec, list_tasks, load_task

__all__ = ["Dataset", "validate_dataset", "load_task", "list_tasks", "TASKS", "TaskSpec", "load_npz"]

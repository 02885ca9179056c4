"""Test-session settings: one intra-op thread per test process.

pytest-xdist runs one worker per core; letting each worker's torch (and each CLI subprocess, which
inherits OMP_NUM_THREADS) also spawn a thread per core oversubscribes the CPU, and OpenMP's
spin-waiting then slows some tests down a hundredfold.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Chunk-size calibrations (and CLI subprocesses, which inherit the variable) write to a
    temporary directory, never to the user's ~/.cache/gdlab."""
    os.environ["GDLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("gdlab-cache"))

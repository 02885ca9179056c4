"""Test-session settings: one intra-op thread per test process, and no state outside the session.

pytest-xdist runs one worker per core; letting each worker's torch (and each CLI subprocess, which
inherits OMP_NUM_THREADS) also spawn a thread per core oversubscribes the CPU, and OpenMP's
spin-waiting then slows some tests down a hundredfold.

Every place a test (or a subprocess it starts, which inherits the environment) could read or write
state that outlives the session points into one temporary directory per test process, removed at
exit: the home directory itself, the XDG cache and config folders, gdlab's chunk-size calibration
cache, matplotlib's font cache and TorchInductor's compiled kernels. A cache left on a developer's
machine can therefore never be what makes a test pass, and the suite writes nothing under the
real ``$HOME``. The variables are set at import, before any test module imports matplotlib or
torch's compiler. Hypothesis keeps no example database for the same reason.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

SESSION_DIR = Path(tempfile.mkdtemp(prefix="gdlab-tests-"))
atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)

ISOLATED = {
    "HOME": "home",
    "XDG_CACHE_HOME": "home/.cache",
    "XDG_CONFIG_HOME": "home/.config",
    "GDLAB_CACHE_DIR": "gdlab-cache",
    "MPLCONFIGDIR": "matplotlib",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
}
for _variable, _sub in ISOLATED.items():
    (SESSION_DIR / _sub).mkdir(parents=True, exist_ok=True)
    os.environ[_variable] = str(SESSION_DIR / _sub)

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

settings.register_profile("gdlab-tests", database=None)
settings.load_profile("gdlab-tests")


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """This test process's temporary directory, holding the isolated home and caches."""
    return SESSION_DIR

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


def _assert_same_run(reference, other, tol=1e-10):
    """``other`` records the same run as ``reference`` to ``tol``: counters and status exactly,
    final metrics, every history record (same steps), the events and the final parameters."""
    for key in ("step", "epochs", "status", "stop_reason", "rollbacks", "gradient_evaluations"):
        assert other.final[key] == reference.final[key], key
    for key in ("train_loss", "train_accuracy", "grad_norm", "test_loss", "test_accuracy", "final_lr"):
        if reference.final[key] is None:
            assert other.final[key] is None, key
        else:
            assert other.final[key] == pytest.approx(reference.final[key], rel=tol, abs=tol), key
    assert ("clipping" in other.final) == ("clipping" in reference.final)
    if "clipping" in reference.final:
        ref, got = reference.final["clipping"], other.final["clipping"]
        assert got["clipped_steps"] == ref["clipped_steps"] and got["fraction"] == ref["fraction"]
        for key in ("min_factor", "median_factor"):
            assert got[key] == (None if ref[key] is None else pytest.approx(ref[key], rel=tol, abs=tol)), key
    assert [h["step"] for h in other.history] == [h["step"] for h in reference.history]
    for a, b in zip(reference.history, other.history):
        for key in ("batch_loss", "train_loss", "grad_norm", "lr", "test_loss", "test_accuracy", "epochs",
                    "clip_factor"):
            if a.get(key) is None:
                assert b.get(key) is None, (key, a["step"])
            else:
                assert b[key] == pytest.approx(a[key], rel=tol, abs=tol), (key, a["step"])
    assert [(e["step"], e["kind"]) for e in other.events] == [(e["step"], e["kind"]) for e in reference.events]
    for p, q in zip(reference.model.parameters(), other.model.parameters()):
        torch.testing.assert_close(q, p, rtol=tol, atol=tol)


@pytest.fixture
def assert_same_run():
    """``assert_same_run(reference, other, tol=1e-10)``: two runs (say an eager run and the same
    config on a faster stepper) record the same run to float rounding."""
    return _assert_same_run

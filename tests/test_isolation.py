"""The test session keeps its state to itself: the home directory and every cache a test could
read or write (gdlab's chunk-size calibrations, matplotlib's fonts, TorchInductor's kernels) lie
in the session's temporary directory, in this process and in the subprocesses tests start. A
calibration cached on a developer's machine can therefore not make a test pass. (`.ci/run` checks
the other half from outside: the suite run with an empty HOME leaves it empty.)"""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

from gdlab.engine import calibrate

PROBE = (
    "import json, pathlib, matplotlib\n"
    "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
    "from gdlab.engine import calibrate\n"
    "print(json.dumps([str(pathlib.Path.home()), str(calibrate.cache_dir()), matplotlib.get_cachedir(), "
    "cache_dir()]))\n"
)


def state_locations() -> list[str]:
    return [str(Path.home()), str(calibrate.cache_dir()), matplotlib.get_cachedir(), inductor_cache_dir()]


def test_home_and_caches_lie_in_the_session_directory(session_dir):
    for location in state_locations():
        assert Path(location).resolve().is_relative_to(session_dir.resolve()), location


def test_a_subprocess_sees_the_same_isolated_home_and_caches(session_dir):
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout) == state_locations()

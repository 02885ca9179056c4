"""Test-session settings: one intra-op thread per test process.

pytest-xdist runs one worker per core; letting each worker's torch (and each CLI subprocess, which
inherits OMP_NUM_THREADS) also spawn a thread per core oversubscribes the CPU, and OpenMP's
spin-waiting then slows some tests down a hundredfold.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

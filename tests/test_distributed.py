"""Full-batch GD across processes (torchrun, gloo on CPU) against the single-process run."""

import json
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from gdlab.cli import main
from gdlab.distributed import shard_bounds


def torchrun(*args, nproc=2, timeout=240, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def failed(proc):
    """A failed torchrun's stderr for the assertion message: its start (where a rank's own error
    appears) and its end (the launcher's summary), which alone does not say why a rank died."""
    err = proc.stderr
    return err if len(err) <= 4000 else f"{err[:2500]}\n[...]\n{err[-1500:]}"


def single(*args):
    """The one-process reference: ``gdlab ARGS`` in this test process (one thread, like each rank)."""
    return SimpleNamespace(returncode=main(list(args)))


def params(path):
    return torch.load(path / "params.pt", weights_only=True)


def max_rel_diff(a, b):
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-300)) for k in a)


@pytest.mark.parametrize(
    "dtype, task, tol",
    [("float64", "digits", 1e-12), ("float32", "digits", 1e-6), ("float64", "linreg", 1e-12)],
)
def test_two_processes_take_the_single_process_full_batch_steps(tmp_path, dtype, task, tol):
    """20 full-batch GD steps with 2 processes (uneven shards for digits: 1437 training rows)
    give the parameters of 1 process: float64 to 1e-12, float32 to 1e-6 relative."""
    common = ["train", "--task", task, "--steps", "20", "--dtype", dtype, "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert single(*common, "--out", str(one)).returncode == 0
    proc = torchrun("-m", "gdlab", *common, "--out", str(two))
    assert proc.returncode == 0, failed(proc)
    assert max_rel_diff(params(one), params(two)) <= tol
    rec1, rec2 = (json.loads((d / "run.json").read_text()) for d in (one, two))
    assert rec2["environment"]["world_size"] == 2
    assert rec2["final"]["epochs"] == rec1["final"]["epochs"] == 20
    assert rec2["final"]["train_loss"] == pytest.approx(rec1["final"]["train_loss"], rel=tol)
    assert rec2["final"]["n_train"] == rec1["final"]["n_train"]


def test_minibatch_across_processes_follows_the_single_process_batches(tmp_path):
    """Mini-batch GD (B = 32, 2 epochs) with 2 processes: each rank takes the rows of the global
    batch it holds, so the run equals the single-process one with the same seed (float64)."""
    common = ["train", "--task", "iris", "--regime", "minibatch", "--batch-size", "32", "--epochs", "2",
              "--dtype", "float64", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert single(*common, "--out", str(one)).returncode == 0
    proc = torchrun("-m", "gdlab", *common, "--out", str(two))
    assert proc.returncode == 0, failed(proc)
    assert max_rel_diff(params(one), params(two)) <= 1e-12


def test_a_rank_that_raises_ends_the_whole_job(tmp_path):
    """Rank 1 raises while rank 0 waits in an all-reduce: the job exits non-zero, promptly."""
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent("""
        import torch
        from gdlab import distributed
        distributed.init_from_env("cpu")
        if distributed.rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        distributed.all_reduce_sum([torch.ones(3)])
    """))
    import os

    env = dict(os.environ, GDLAB_DIST_TIMEOUT_S="30")
    start = time.time()
    proc = torchrun(str(script), timeout=120, env=env)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert time.time() - start < 90


def test_only_rank_zero_writes_and_user_errors_exit_2(tmp_path):
    """A bad argument fails on every rank with one-line errors and a non-zero exit."""
    proc = torchrun("-m", "gdlab", "train", "--task", "digts", "--quiet")
    assert proc.returncode != 0
    assert "did you mean 'digits'" in proc.stderr


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (1437, 2), (5, 5)])
def test_shards_cover_every_row_once_with_sizes_within_one(n, world):
    """Shards are contiguous, disjoint, cover range(n) and differ in size by at most one row."""
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1

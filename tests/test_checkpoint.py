"""Checkpoints and exact resume: an interrupted run continued from its checkpoint ends with the
bit-identical parameters and history of an uninterrupted run (CPU)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gdlab.checkpoint import CHECKPOINT_NAME, read_checkpoint, write_checkpoint
from gdlab.config import RunConfig
from gdlab.engine.loop import Callback
from gdlab.errors import GdlabError
from gdlab.run import run


class Crash(Callback):
    """Simulates a crash after ``at`` updates."""

    def __init__(self, at):
        self.at = at

    def on_step(self, info):
        if info.step == self.at:
            raise RuntimeError("simulated crash")


def strip(history):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in history]


@pytest.mark.parametrize("regime, extra", [
    ("full", {"steps": 60, "optimizer": "adam"}),
    ("minibatch", {"max_epochs": 25, "batch_size": 50, "optimizer": "momentum", "schedule": "cosine"}),
    ("stochastic", {"steps": 300, "optimizer": "gd", "lr": 0.01}),
])
def test_resume_after_a_crash_is_bit_identical(tmp_path, regime, extra):
    """Crash after 45 updates, resume from the checkpoint of update 40: final parameters are
    torch.equal to the uninterrupted run's and the histories agree record for record (the mini-batch
    order, the schedule, the optimizer state and the Dropout RNG are all restored)."""
    fields = dict(task="iris", model="mlp:4-16-3:relu:dropout=0.2", regime=regime, checkpoint_every=20,
                  log_every=1, **extra)
    whole = run(RunConfig.from_dict(fields), checkpoint_dir=tmp_path / "whole")
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(RunConfig.from_dict(fields), callbacks=[Crash(45)], checkpoint_dir=crashed)
    payload = read_checkpoint(crashed)
    assert payload["loop"]["step"] == 40
    resumed = run(RunConfig.from_dict(payload["config"]), checkpoint_dir=crashed, resume=payload)
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.final["step"] == whole.final["step"]


def test_killed_training_process_resumes_to_the_same_result(tmp_path):
    """SIGKILL a `gdlab train` process after its first checkpoint, then `gdlab train --resume DIR`:
    the saved parameters equal those of an uninterrupted run."""
    args = ["train", "--task", "digits", "--regime", "stochastic", "--epochs", "2", "--lr", "0.01",
            "--checkpoint-every", "300", "--quiet"]
    ref = tmp_path / "ref"
    assert subprocess.run([sys.executable, "-m", "gdlab", *args, "--out", str(ref)]).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gdlab", *args, "--out", str(out)])
    deadline = time.time() + 120
    while not (out / CHECKPOINT_NAME).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "params.pt").exists()
    done = subprocess.run([sys.executable, "-m", "gdlab", "train", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a = torch.load(ref / "params.pt", weights_only=True)
    b = torch.load(out / "params.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A write that fails midway (disk full simulated) raises a one-line GdlabError, leaves no
    temporary file and the previous checkpoint still loads."""
    write_checkpoint(tmp_path, {"config": {"task": "iris"}, "loop": {"step": 1}})

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GdlabError, match="No space left on device") as info:
        write_checkpoint(tmp_path, {"config": {"task": "iris"}, "loop": {"step": 2}})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path)["loop"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_checkpoints_are_user_errors(tmp_path, content):
    """Missing, empty, garbage and truncated checkpoints give one-line GdlabErrors."""
    if content is None:
        write_checkpoint(tmp_path, {"config": {}, "loop": {}})
        data = (tmp_path / CHECKPOINT_NAME).read_bytes()
        (tmp_path / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    elif content:
        (tmp_path / CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(GdlabError) as info:
        read_checkpoint(tmp_path if content != b"" else tmp_path / "missing")
    assert "\n" not in str(info.value)


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    """A process rewriting a large checkpoint in a loop is SIGKILLed at several moments: every
    time, the checkpoint on disk loads (the previous or the new one, never a torn one)."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, torch\n"
        "from gdlab.checkpoint import write_checkpoint\n"
        "i = 0\n"
        "while True:\n"
        "    write_checkpoint(sys.argv[1], {'config': {}, 'loop': {'step': i}, 'w': torch.full((2_000_000,), float(i))})\n"
        "    i += 1\n"
    )
    for delay in (0.3, 0.55, 0.8, 1.1):
        d = tmp_path / f"ck{delay}"
        proc = subprocess.Popen([sys.executable, str(script), str(d)])
        deadline = time.time() + 60
        while not (d / CHECKPOINT_NAME).exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        payload = read_checkpoint(d)
        assert float(payload["w"][0]) == float(payload["loop"]["step"]) == float(payload["w"][-1])


def test_disk_full_while_saving_a_run_is_a_clear_error(tmp_path, monkeypatch):
    """--out on a full disk: GdlabError naming the directory, and no half-written run directory."""
    from gdlab.run import save_run

    result = run(RunConfig.from_dict(dict(task="iris", steps=2)))

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GdlabError, match="No space left on device"):
        save_run(result, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []

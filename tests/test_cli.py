"""The gdlab command: output, exit codes and one-line errors.

The commands a user runs end to end (train with --json and --out, demo, list, a bad argument) run
in a subprocess, as ``python -m gdlab``; the rest call ``gdlab.cli.main`` in the test process
(the same parser, dispatch and error handling, without paying a torch import per case).
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from gdlab.cli import main


def gdlab(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gdlab", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``gdlab ARGS`` in this process: returncode, stdout and stderr, like
    :func:`gdlab`."""
    def call(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return call


def test_train_prints_a_json_run_record_and_saves_the_run(tmp_path):
    """`gdlab train --json --out` prints a valid record (no NaN) and writes run.json + params.pt."""
    out = tmp_path / "run"
    proc = gdlab("train", "--task", "digits", "--model", "mlp:64-32-10:relu", "--optimizer", "gd",
                 "--lr", "0.5", "--regime", "full", "--steps", "30", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["final"]["step"] == 30 and record["final"]["status"] == "completed"
    assert record["config"]["model"] == "mlp:64-32-10:relu"
    assert record["history"][0]["train_loss"] > record["final"]["train_loss"]
    assert 0.5 < record["final"]["test_accuracy"] <= 1.0
    saved = json.loads((out / "run.json").read_text())
    assert saved["final"]["train_loss"] == record["final"]["train_loss"]
    assert (out / "params.pt").is_file()


def test_train_summary_and_config_file(tmp_path, cli):
    """A YAML config file drives a minibatch run; flags override it; the summary names the run."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: iris\noptimizer: momentum\nlr: 0.05\nregime: minibatch\nbatch_size: 16\n"
                   "max_epochs: 3\noptimizer_params: {momentum: 0.5}\n")
    proc = cli("train", "--config", str(cfg), "--lr", "0.1", "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["config"]["lr"] == 0.1 and record["config"]["optimizer_params"] == {"momentum": 0.5}
    assert record["final"]["epochs"] == pytest.approx(3.0)
    proc = cli("train", "--task", "iris", "--steps", "5")
    assert proc.returncode == 0 and "test accuracy" in proc.stdout and "completed" in proc.stdout


def test_demo_runs_end_to_end():
    """`gdlab demo` trains batch, mini-batch and stochastic GD for the same epochs and tabulates them."""
    proc = gdlab("demo", "--task", "iris", "--epochs", "2", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)["runs"]
    assert [r["config"]["regime"] for r in runs] == ["full", "minibatch", "stochastic"]
    assert all(r["final"]["epochs"] == pytest.approx(2.0) for r in runs)
    assert "batch GD" in proc.stderr and "stochastic B=1" in proc.stderr


def test_list_shows_every_registry():
    """`gdlab list` names tasks, model families, optimizers, regimes and losses."""
    proc = gdlab("list")
    assert proc.returncode == 0
    for name in ("digits", "mnist1d", "adding", "mlp", "lstm", "nesterov", "linesearch", "stochastic", "bce"):
        assert name in proc.stdout
    assert "--l2 changes the objective" in proc.stdout


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    X = np.random.default_rng(0).normal(size=(20, 3))
    nan = X.copy()
    nan[4, 1] = np.nan
    np.savez(d / "nan.npz", X=nan, y=np.arange(20) % 2)
    np.savez(d / "neg.npz", X=X, y=np.arange(20) % 3 - 1)
    (d / "bad.yaml").write_text("task: digits\nlr: [oops\n")
    (d / "afile").write_text("not a directory")
    return d


BAD = [
    (["train", "--task", "digts"], "did you mean 'digits'"),
    (["train", "--model", "mpl:64-128-10"], "did you mean 'mlp'"),
    (["train", "--optimizer", "adm"], "did you mean 'adam'"),
    (["train", "--regime", "minibtch"], "did you mean 'minibatch'"),
    (["train", "--loss", "crossentropy"], "did you mean 'cross_entropy'"),
    (["train", "--lr", "-0.1"], "'lr' must be > 0"),
    (["train", "--lr", "0"], "'lr' must be > 0"),
    (["train", "--lr", "abc"], "invalid float value"),
    (["train", "--regime", "minibatch", "--batch-size", "5000"], "larger than the training set"),
    (["train", "--regime", "minibatch", "--batch-size", "0"], "'batch_size' must be >= 1"),
    (["train", "--model", "mlp:10-32-10:relu"], "takes 10 inputs but the data has 64"),
    (["train", "--model", "mlp:64-32-5:relu"], "5"),
    (["train", "--data", "{d}/nan.npz"], "NaN"),
    (["train", "--data", "{d}/neg.npz", "--loss", "cross_entropy"], "label"),
    (["train", "--data", "{d}/missing.npz"], "missing.npz"),
    (["train", "--config", "{d}/bad.yaml"], "not valid YAML"),
    (["train", "--config", "{d}/nope.yaml"], "does not exist"),
    (["train", "--opt", "momentum=0.9"], "momentum"),
    (["train", "--steps", "2", "--out", "{d}/afile"], "not a directory"),
    (["train", "--unknown-flag"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
]


# Run as real processes: the exit status and stderr a shell sees, for a config and a parser error.
IN_SUBPROCESS = {("train", "--lr", "-0.1"), ("frobnicate",)}


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gives_one_line_error_and_exit_2(bad_files, tmp_path, cli, argv, needle):
    """Every user mistake: exit status 2, one stderr line naming it, no traceback, nothing written."""
    run_it = gdlab if tuple(argv) in IN_SUBPROCESS else cli
    argv = [a.replace("{d}", str(bad_files)) for a in argv]
    out = tmp_path / "never"
    extra = [] if "--out" in argv else ["--out", str(out)] if argv[0] == "train" else []
    proc = run_it(*argv, *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gdlab: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()
    assert (bad_files / "afile").read_text() == "not a directory"


def test_stability_reports_vanishing_layers_and_sharpness(cli):
    """`gdlab stability` on a deep sigmoid MLP names the first problem (vanishing at the first
    layer), prints the per-layer table and the sharpness-vs-2/lr table."""
    proc = cli("stability", "--task", "digits", "--model", "mlp:64x8:sigmoid", "--lr", "0.5",
                 "--steps", "10")
    assert proc.returncode == 0, proc.stderr
    assert "first problem at step 0: vanishing in layers.0.weight" in proc.stdout
    assert "2/lr" in proc.stdout and "layers.16.weight" in proc.stdout


def test_sharpness_of_a_saved_run_matches_the_closed_form(tmp_path, cli):
    """`gdlab sharpness --run DIR` on a saved linear regression returns lambda_max(X^T X / N)
    (numpy.linalg.eigvalsh), the Hessian of the 0.5-mean-squared-error objective."""
    import torch

    from gdlab.data import load_task

    out = tmp_path / "lin"
    assert cli("train", "--task", "linreg", "--steps", "20", "--quiet", "--out", str(out)).returncode == 0
    proc = cli("sharpness", "--run", str(out), "--k", "2", "--iters", "10", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    data = load_task("linreg", seed=0, dtype=torch.float64)
    A = np.c_[data.X_train.numpy(), np.ones(data.n_train)]
    eig = np.linalg.eigvalsh(A.T @ A / data.n_train)
    assert result["top_eigenvalues"] == pytest.approx(sorted(eig, reverse=True), rel=1e-4)
    assert result["side"] == ("stable" if 0.1 * eig.max() < 2 else "unstable")
    # the CLI prints what the Python API returns
    import gdlab

    python = gdlab.run_sharpness(out, k=2, iters=10)
    assert {k: v for k, v in python.items() if k in result} == result


def test_sharpness_bad_run_directories_exit_2(tmp_path, cli):
    """A missing run directory and a params.pt from another model give one-line errors, exit 2."""
    proc = cli("sharpness", "--run", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "is missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", "--task", "iris", "--steps", "1", "--quiet", "--out", str(a)).returncode == 0
    assert cli("train", "--task", "iris", "--model", "mlp:4-8-3", "--steps", "1", "--quiet",
               "--out", str(b)).returncode == 0
    (a / "params.pt").write_bytes((b / "params.pt").read_bytes())
    proc = cli("sharpness", "--run", str(a))
    assert proc.returncode == 2 and "does not match model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

"""The bad-input catalogue: every mistake in CLI arguments, config files, study files, data files
and checkpoints gives one line naming the problem, exit status 2, no traceback, and leaves
existing files (an earlier run directory, the run store) untouched."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gdlab.cli import main


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Bad files of every kind, an earlier run directory and a run store to keep intact."""
    d = tmp_path_factory.mktemp("bad")
    X = np.random.default_rng(0).normal(size=(30, 3))
    y = np.arange(30) % 2
    nan = X.copy()
    nan[3, 1] = np.nan
    inf = X.copy()
    inf[5, 0] = np.inf
    np.savez(d / "nan.npz", X=nan, y=y)
    np.savez(d / "inf.npz", X=inf, y=y)
    np.savez(d / "neg.npz", X=X, y=y - 1)
    np.savez(d / "short.npz", X=X, y=y[:10])
    np.savez(d / "noy.npz", X=X)
    np.savez(d / "empty.npz", X=X[:0], y=y[:0])
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "truncated.npz").write_bytes((d / "nan.npz").read_bytes()[:100])
    (d / "text.npz").write_text("hello")
    (d / "latin1.csv").write_bytes("a,b,label\n1,2,caf\xe9\n".encode("latin-1"))
    (d / "cells.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    (d / "empty.csv").write_text("")
    (d / "cfg_bad_yaml.yaml").write_text("task: digits\nlr: [oops\n")
    (d / "cfg_list.yaml").write_text("- 1\n- 2\n")
    (d / "cfg_unknown.yaml").write_text("task: digits\nlearning_rate: 0.1\n")
    (d / "cfg_type.json").write_text(json.dumps({"task": "digits", "steps": "many"}))
    (d / "cfg_latin1.yaml").write_bytes("task: caf\xe9\n".encode("latin-1"))
    (d / "study_bad.yaml").write_text("name: s\ntasks: []\noptimizers: []\n")
    (d / "study_neg.yaml").write_text(
        "name: s\ntasks: [{task: iris, budget: {epochs: -1}, target: {train_loss: 0.1}}]\n"
        "optimizers: [{optimizer: gd, lr: 0.1}]\n")
    (d / "study_space.yaml").write_text(
        "name: s\ntasks: [{task: iris, budget: {epochs: 1}, target: {train_loss: 0.1}}]\n"
        "optimizers: [{optimizer: gd, lr: {low: 1.0, high: 0.5}}]\n")
    (d / "afile").write_text("not a directory")
    ck = d / "ck_garbage"
    ck.mkdir()
    (ck / "checkpoint.pt").write_bytes(b"garbage")
    ck2 = d / "ck_truncated"
    ck2.mkdir()
    torch.save({"format": 1, "config": {}, "loop": {}}, ck2 / "checkpoint.pt")
    (ck2 / "checkpoint.pt").write_bytes((ck2 / "checkpoint.pt").read_bytes()[:40])
    # an earlier run and a store that no mistake may touch
    assert main(["train", "--task", "iris", "--steps", "2", "--quiet", "--out", str(d / "earlier"),
                 "--checkpoint-every", "1"]) == 0
    from gdlab.store import RunStore

    with RunStore(d / "runs" / "gdlab.db") as store:
        store.save_study("kept", {"name": "kept"})
    ck3 = d / "ck_other_model"
    ck3.mkdir()
    payload = torch.load(d / "earlier" / "checkpoint.pt", weights_only=True)
    payload["config"]["model"] = "mlp:4-8-3"
    torch.save(payload, ck3 / "checkpoint.pt")
    return d


CASES = [
    # CLI arguments
    (["train", "--task", "digts"], "did you mean 'digits'"),
    (["train", "--model", "mpl:64-10"], "did you mean 'mlp'"),
    (["train", "--model", "mlp:64-32-10:relx"], "relu"),
    (["train", "--model", "mlp:10-32-10"], "takes 10 inputs"),
    (["train", "--model", "lstm:16", "--task", "iris"], "(T, F)"),
    (["train", "--optimizer", "adm"], "did you mean 'adam'"),
    (["train", "--regime", "minibtch"], "did you mean 'minibatch'"),
    (["train", "--loss", "crossentropy"], "did you mean 'cross_entropy'"),
    (["train", "--loss", "bce"], "2 classes"),
    (["train", "--lr", "-1"], "'lr' must be > 0"),
    (["train", "--lr", "0"], "'lr' must be > 0"),
    (["train", "--lr", "nan"], "finite"),
    (["train", "--lr", "fast"], "invalid float value"),
    (["train", "--steps", "-5"], "'steps' must be >= 0"),
    (["train", "--epochs", "0"], "'max_epochs' must be > 0"),
    (["train", "--regime", "minibatch", "--batch-size", "100000"], "larger than the training set"),
    (["train", "--regime", "minibatch", "--batch-size", "0"], "'batch_size' must be >= 1"),
    (["train", "--regime", "stochastic", "--batch-size", "8"], "one row per step"),
    (["train", "--test-fraction", "1.5"], "test_fraction"),
    (["train", "--opt", "momentum"], "KEY=VALUE"),
    (["train", "--opt", "betas=[0.9,2]", "--optimizer", "adam"], "betas"),
    (["train", "--optimizer", "gd", "--momentum", "0.9"], "unknown hyper-parameter 'momentum'"),
    (["train", "--schedule", "cosin"], "did you mean 'cosine'"),
    (["train", "--schedule", "step:0:0.5"], "EVERY"),
    (["train", "--optimizer", "linesearch", "--schedule", "cosine"], "takes no schedule"),
    (["train", "--grad-tol", "1e-3", "--regime", "minibatch"], "grad_tol"),
    (["train", "--clip-norm", "-1"], "'clip_norm' must be > 0"),
    (["train", "--device", "tpu"], "device"),
    (["train", "--steps", "2", "--out", "{d}/afile"], "not a directory"),
    (["train", "--checkpoint-every", "5"], "needs --out"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    # config files
    (["train", "--config", "{d}/missing.yaml"], "does not exist"),
    (["train", "--config", "{d}/cfg_bad_yaml.yaml"], "not valid YAML"),
    (["train", "--config", "{d}/cfg_list.yaml"], "mapping"),
    (["train", "--config", "{d}/cfg_unknown.yaml"], "unknown config field 'learning_rate'"),
    (["train", "--config", "{d}/cfg_type.json"], "'steps' must be an integer"),
    (["train", "--config", "{d}/cfg_latin1.yaml"], "UTF-8"),
    # study files
    (["compare", "{d}/study_bad.yaml", "--store", "{d}/runs/gdlab.db"], "non-empty list"),
    (["compare", "{d}/study_neg.yaml", "--store", "{d}/runs/gdlab.db"], "must be > 0"),
    (["compare", "{d}/study_space.yaml", "--store", "{d}/runs/gdlab.db"], "search space is empty"),
    (["report", "{d}/nostore.db"], "nostore.db"),
    # data files
    (["train", "--data", "{d}/nan.npz"], "NaN"),
    (["train", "--data", "{d}/inf.npz"], "Inf"),
    (["train", "--data", "{d}/neg.npz", "--loss", "cross_entropy"], "label"),
    (["train", "--data", "{d}/short.npz"], "30"),
    (["train", "--data", "{d}/noy.npz"], "'y'"),
    (["train", "--data", "{d}/empty.npz"], "empty"),
    (["train", "--data", "{d}/objects.npy"], "npy"),
    (["train", "--data", "{d}/truncated.npz"], "truncated.npz"),
    (["train", "--data", "{d}/text.npz"], "not an .npz"),
    (["train", "--data", "{d}/latin1.csv"], "UTF-8"),
    (["train", "--data", "{d}/cells.csv"], "row"),
    (["train", "--data", "{d}/empty.csv"], "empty"),
    (["train", "--data", "{d}/nothing.npz"], "nothing.npz"),
    (["train", "--task", "mnist-mlp", "--data-dir", "{d}"], "train-images-idx3-ubyte"),
    # checkpoints
    (["train", "--resume", "{d}/nocheckpoint"], "no checkpoint"),
    (["train", "--resume", "{d}/ck_garbage"], "cannot read checkpoint"),
    (["train", "--resume", "{d}/ck_truncated"], "cannot read checkpoint"),
    (["train", "--resume", "{d}/ck_other_model"], "does not match"),
    (["train", "--resume", "{d}/earlier", "--lr", "0.5"], "drop --lr"),
    (["sharpness", "--run", "{d}/nocheckpoint"], "is missing"),
]


def test_the_catalogue_has_at_least_40_distinct_inputs():
    assert len({tuple(a) for a, _ in CASES}) >= 40


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input(world, capsys, argv, needle):
    """One line on stderr naming the problem, status 2, nothing on stdout, nothing changed."""
    before = digest(world)
    code = main([a.replace("{d}", str(world)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdlab: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert digest(world) == before

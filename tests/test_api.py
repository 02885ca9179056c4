"""The Python API after ``import gdlab``: train on tensors, torch Datasets, DataLoaders and task
names gives the CLI's result on the same data and seed; the gradient and sharpness of a
streamed DataLoader equal one float64 autograd pass (and the tensor version); bad input is one
GdlabError naming the fix; a study runs from Python."""

import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset

import gdlab
from gdlab.cli import main
from gdlab.diagnostics.hessian import HessianOperator, dense_hessian
from gdlab.errors import GdlabError

ce = nn.functional.cross_entropy


def blobs(n=240, d=5, classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    y = (X @ torch.randn(d, classes, generator=g, dtype=dtype)).argmax(1)
    return X, y


def params_of(result):
    return [p.detach().clone() for p in result.model.parameters()]


def assert_same_params(a, b):
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


OPTIONS = dict(optimizer="nesterov", lr=0.3, regime="minibatch", batch_size=32, max_epochs=3, seed=4)
FLAGS = ["--optimizer", "nesterov", "--lr", "0.3", "--regime", "minibatch", "--batch-size", "32",
         "--epochs", "3", "--seed", "4"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """`gdlab train --data blobs.npz` (its own test split, not standardised): the record and the
    saved parameters."""
    d = tmp_path_factory.mktemp("api")
    X, y = blobs()
    Xt, yt = blobs(60, seed=1)
    np.savez(d / "blobs.npz", X=X.numpy(), y=y.numpy(), X_test=Xt.numpy(), y_test=yt.numpy())
    assert main(["train", "--data", str(d / "blobs.npz"), "--no-standardize", *FLAGS, "--quiet",
                 "--out", str(d / "cli")]) == 0
    record = json.loads((d / "cli" / "run.json").read_text())
    saved = torch.load(d / "cli" / "params.pt", weights_only=True)
    return record, list(saved.values()), (X, y, Xt, yt)


def test_train_on_tensors_equals_the_cli_on_the_same_file(cli_reference):
    record, cli_params, (X, y, Xt, yt) = cli_reference
    run = gdlab.train(None, (X, y), test=(Xt, yt), **OPTIONS)
    assert run.final["train_loss"] == record["final"]["train_loss"]
    assert run.final["test_accuracy"] == record["final"]["test_accuracy"]
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in record["history"]]
    assert_same_params(params_of(run), cli_params)
    assert run.environment["data"].startswith("in memory")


def test_train_on_a_torch_dataset_equals_tensors(cli_reference):
    """A torch Dataset's rows are read once, in the dataset's order, into tensors: the same run."""
    record, cli_params, (X, y, Xt, yt) = cli_reference
    run = gdlab.train(None, TensorDataset(X, y), test=TensorDataset(Xt, yt), **OPTIONS)
    assert run.final["train_loss"] == record["final"]["train_loss"]
    assert_same_params(params_of(run), cli_params)


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_streams_a_dataloader_and_takes_the_clis_steps(cli_reference, shuffle):
    """A DataLoader is streamed: each mini-batch step reads the rows the run's schedule draws from
    the loader's dataset (the loader's shuffling is not the sample order), so the steps, and the
    parameters, are the CLI's exactly; the full-batch losses are sums over the loader's batches
    instead of one pass, equal to float rounding."""
    record, cli_params, (X, y, Xt, yt) = cli_reference
    loader = DataLoader(TensorDataset(X, y), batch_size=50, shuffle=shuffle)
    run = gdlab.train(None, loader, test=DataLoader(TensorDataset(Xt, yt), batch_size=7), **OPTIONS)
    assert_same_params(params_of(run), cli_params)
    assert run.final["train_loss"] == pytest.approx(record["final"]["train_loss"], rel=1e-6)
    assert run.final["test_accuracy"] == record["final"]["test_accuracy"]
    assert [h["train_loss"] for h in run.history] == pytest.approx(
        [h["train_loss"] for h in record["history"]], rel=1e-6, nan_ok=True)
    assert run.environment["data"].startswith("streamed from a DataLoader")
    assert run.final["engine"]["path"] == "eager" and "DataLoader" in run.final["engine"]["reason"]


class Rows(torch.utils.data.Dataset):
    """Rows made on demand (nothing stored): row i of a fixed random (X, y); counts its reads."""

    def __init__(self, X, y):
        self.X, self.y, self.reads = X, y, 0

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        self.reads += 1
        return self.X[i].clone(), self.y[i].clone()


@pytest.mark.parametrize("regime, options", [
    ("full", dict(optimizer="momentum", lr=0.3, steps=15)),
    ("minibatch", dict(optimizer="adam", lr=0.02, batch_size=16, max_epochs=2)),
    ("stochastic", dict(optimizer="gd", lr=0.05, max_epochs=1)),
])
def test_a_streamed_dataloader_trains_in_every_regime_as_its_tensors_do(regime, options):
    """Reference: the same rows as tensors. Full batch: the gradient is summed over the loader's
    batches of 32, a different order of the same sum (parameters to 1e-5 after 15 steps);
    mini-batch and stochastic: the same rows each step, so the same parameters exactly. The rows
    are read from the dataset at every pass and step, never all held at once."""
    X, y = blobs(120)
    rows = Rows(X, y)
    streamed = gdlab.train(None, DataLoader(rows, batch_size=32, shuffle=True), regime=regime, seed=3, **options)
    training_reads = len(X) * (streamed.final["step"] if regime == "full" else 1)
    assert rows.reads >= len(X) + training_reads  # the check pass, then every step's rows
    tensors = gdlab.train(None, (X, y), regime=regime, seed=3, **options)
    assert streamed.final["step"] == tensors.final["step"] and streamed.final["n_train"] == 120
    for a, b in zip(params_of(streamed), params_of(tensors)):
        if regime == "full":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)
    assert streamed.final["train_loss"] == pytest.approx(tensors.final["train_loss"], rel=1e-5)


def test_a_streamed_regression_loader_gets_its_target_size_from_the_batches():
    X = torch.randn(90, 4)
    y = X[:, :1].sum(1) * 2.0  # float targets of shape (N,): regression with one output
    run = gdlab.train(None, DataLoader(TensorDataset(X, y), batch_size=40), lr=0.2, steps=20)
    reference = gdlab.train(None, (X, y), lr=0.2, steps=20)
    assert run.config["loss"] == "mse" and run.final["test_accuracy"] is None
    assert run.final["train_loss"] == pytest.approx(reference.final["train_loss"], rel=1e-5)


class Images(torch.utils.data.Dataset):
    def __init__(self, kind):
        self.kind = kind

    def __len__(self):
        return 20

    def __getitem__(self, i):
        if self.kind == "uint8":
            return torch.zeros(3, dtype=torch.uint8), 0
        if self.kind == "shape":
            return torch.zeros(3 if i < 10 else 4), 0
        return torch.full((3,), float("nan") if i == 13 else 0.0), i % 2


@pytest.mark.parametrize("make, needle", [
    (lambda: gdlab.train(None, DataLoader(Images("uint8"), batch_size=8)), "torch.uint8 inputs"),
    (lambda: gdlab.train(None, DataLoader(Images("shape"), batch_size=8)), "stack expects each tensor"),
    (lambda: gdlab.train(None, DataLoader(Images("shape"), batch_size=10)), "inputs of one shape"),
    (lambda: gdlab.train(None, DataLoader(Images("nan"), batch_size=8)), "NaN or Inf"),
    (lambda: gdlab.train(None, DataLoader(TensorDataset(*blobs()), batch_size=8), test=blobs()),
     "test must be a DataLoader"),
    (lambda: gdlab.train(None, DataLoader(TensorDataset(*blobs()), batch_size=8), chunk_size=16),
     "chunk_size does not apply"),
    (lambda: gdlab.train(None, DataLoader(TensorDataset(*blobs()), batch_size=7, drop_last=True)),
     "drop_last"),
])
def test_a_bad_streamed_dataloader_is_one_gdlab_error_before_training(make, needle):
    with pytest.raises(GdlabError, match=needle) as info:
        make()
    assert "\n" not in str(info.value)


def test_train_on_a_task_name_equals_the_cli(tmp_path):
    assert main(["train", "--task", "iris", "--optimizer", "adam", "--lr", "0.05", "--steps", "40", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    record = json.loads((tmp_path / "cli" / "run.json").read_text())
    run = gdlab.train(None, "iris", optimizer="adam", lr=0.05, steps=40)
    assert run.config == record["config"]
    assert run.final["train_loss"] == record["final"]["train_loss"]


def test_train_takes_a_users_module_and_trains_it_in_place():
    X, y = blobs()
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    run = gdlab.train(model, (X, y), lr=0.5, steps=30)
    assert run.model is model and run.final["step"] == 30
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    regression = gdlab.train(None, (X, X[:, :2].sum(1)), steps=5)  # float targets: regression, (N, 1)
    assert regression.config["loss"] == "mse" and regression.final["test_accuracy"] is None


def float64_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()


@pytest.mark.parametrize("shuffle", [False, True])
def test_full_batch_grad_of_a_dataloader_is_the_whole_set_gradient(shuffle):
    """Batches of 37 rows (the last one short), shuffled or not, float64: the gradient of the mean
    loss over all 240 rows, to 1e-10 against one autograd pass on the whole set."""
    X, y = blobs(dtype=torch.float64)
    model = float64_net()
    reference = torch.autograd.grad(ce(model(X), y), list(model.parameters()))
    loader = DataLoader(TensorDataset(X, y), batch_size=37, shuffle=shuffle)
    grads = gdlab.full_batch_grad(model, ce, loader)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    for form in ((X, y), TensorDataset(X, y)):
        for g, r in zip(gdlab.full_batch_grad(model, "cross_entropy", form, chunk_size=50), reference):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_sharpness_of_a_dataloader_equals_the_tensor_version_and_the_dense_hessian():
    X, y = blobs(dtype=torch.float64)
    model = float64_net(1)
    streamed = gdlab.sharpness(model, ce, DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True), k=2,
                               iters=60, tol=None)
    whole = gdlab.sharpness(model, ce, (X, y), k=2, iters=60, tol=None)
    dense = torch.linalg.eigvalsh(dense_hessian(HessianOperator(model, ce, X, y))).flip(0)[:2]
    assert streamed.values == pytest.approx(whole.values, rel=1e-9)
    assert streamed.values == pytest.approx(dense.tolist(), rel=1e-8)
    assert float(streamed) == streamed.value == streamed.values[0]


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(torch.randn(10, 5), torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("loader, needle", [
    (DataLoader(TensorDataset(*blobs()), batch_size=64, drop_last=True), "drop_last"),
    (DataLoader(TensorDataset(*blobs()), batch_size=8,
                sampler=RandomSampler(range(240), replacement=True)), "replacement"),
    (DataLoader(Stream(), batch_size=4), "no length"),
    (DataLoader(TensorDataset(*blobs()), batch_size=None), "batch_size=None"),
])
def test_a_dataloader_that_is_not_one_pass_over_every_row_is_refused(loader, needle):
    with pytest.raises(GdlabError, match=needle) as info:
        gdlab.full_batch_grad(float64_net().float(), ce, loader)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("call, needle", [
    (lambda X, y: gdlab.train(None, (X, y), lr=-1.0), "'lr' must be > 0"),
    (lambda X, y: gdlab.train(None, (X, y), optimzer="adam"), "did you mean 'optimizer'"),
    (lambda X, y: gdlab.train(None, (X, y), epochs=3), "did you mean 'max_epochs'"),
    (lambda X, y: gdlab.train(None, (X, y, X), steps=1), "(X, y) or (X, y, X_test, y_test)"),
    (lambda X, y: gdlab.train(None, (X, y[:10]), steps=1), "same number of rows"),
    (lambda X, y: gdlab.train("mlp:5-8-3", "iris", task="digits"), "repeats"),
    (lambda X, y: gdlab.train(None, "iris", test=(X, y)), "in-memory data"),
    (lambda X, y: gdlab.train(None, {"X": X}), "got dict"),
    (lambda X, y: gdlab.full_batch_grad(nn.Linear(5, 3), ce, X), "pair (X, y)"),
])
def test_bad_api_input_is_one_gdlab_error_naming_the_fix(call, needle):
    X, y = blobs()
    with pytest.raises(GdlabError) as info:
        call(X, y)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_compare_runs_a_study_from_python_and_reports(tmp_path):
    study = {
        "name": "py", "workers": 1, "seeds": [0],
        "tuning": {"sampler": "grid", "trials": 2, "seed": 0},
        "tasks": [{"name": "lin", "task": "linreg", "budget": {"epochs": 10}, "target": {"train_loss": 0.6}}],
        "optimizers": [{"name": "gd", "optimizer": "gd", "regime": "full", "lr": {"low": 0.05, "high": 0.5}}],
    }
    outcome = gdlab.compare(study, store=tmp_path / "s.db", out=tmp_path / "report")
    assert outcome.name == "py" and outcome.store == str(tmp_path / "s.db")
    assert (tmp_path / "report" / "report.html").is_file() and outcome.summary["tasks"] == ["lin"]
    again = gdlab.compare(study, store=tmp_path / "s.db", out=None)
    assert again.report is None


def test_the_cli_and_a_studys_report_start_without_torch():
    """The command line and the report load no torch (about 1.5 s): a study's main process only
    schedules work and draws; the workers load torch."""
    import subprocess
    import sys

    code = ("import sys, gdlab.cli, gdlab.study.execute, gdlab.report.study; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_package_exposes_the_api():
    for name in ("train", "full_batch_grad", "sharpness", "compare", "write_report", "RunConfig", "Dataset",
                 "RunResult", "GdlabError"):
        assert name in dir(gdlab) and getattr(gdlab, name) is not None
    importlib.import_module("gdlab.report.figures")  # the subpackage gdlab.report shadows no function
    assert callable(gdlab.write_report) and callable(gdlab.compare)
    with pytest.raises(AttributeError):
        gdlab.no_such_name

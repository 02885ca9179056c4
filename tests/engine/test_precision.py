"""Precision and device: float64 accumulation of float32 chunks, bf16 autocast, the --precision
flag end to end, and device resolution.

References: one autograd pass over the whole set in float64 (accumulation), the float32 gradient
(autocast), bf16's unit roundoff 2^-8 (chunk-size independence under autocast).
"""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import gdlab.run as runner
from gdlab.cli import main
from gdlab.config import RunConfig
from gdlab.engine.objective import evaluate, full_batch_loss, full_batch_loss_and_grad
from gdlab.errors import GdlabError

N = 4096
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: spacing at 1, twice the unit roundoff


def ce(out, y):
    return nn.functional.cross_entropy(out, y)


def case(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3)).to(dtype)
    X = torch.randn(N, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, X, y


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1).to(torch.float64) for p in model.parameters()])


def float64_reference(model, X, y):
    """Loss and gradient of one autograd pass over the whole set, in float64."""
    ref = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    ref.load_state_dict(model.state_dict())
    loss = ce(ref(X.double()), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_float64_accumulation_of_float32_chunks_shrinks_the_error():
    """With 1024 float32 chunks, summing them in float64 is several times closer to the float64
    whole-set gradient than summing in float32, and closer than one float32 pass over the set."""
    model, X, y = case()
    ref_loss, ref = float64_reference(model, X, y)
    errors = {}
    for chunk in (N, 4):
        for acc in (torch.float32, torch.float64):
            res = full_batch_loss_and_grad(model, ce, X, y, chunk_size=chunk, accumulate=acc)
            assert all(p.grad.dtype == torch.float32 for p in model.parameters())
            errors[chunk, acc] = rel(flat_grad(model), ref), abs(res.loss - ref_loss)
    grad_err = {k: v[0] for k, v in errors.items()}
    assert grad_err[4, torch.float64] < grad_err[4, torch.float32] / 4
    # One float32 pass over the whole set is itself only as good as its BLAS's float32
    # reductions (8e-7 on an AMD EPYC, 2e-7 on an Intel Xeon); float64 sums of float32 chunks
    # beat it wherever it runs.
    assert grad_err[4, torch.float64] < grad_err[N, torch.float32]
    assert grad_err[4, torch.float64] < 1e-7  # what is left is each chunk's own float32 rounding
    assert errors[4, torch.float64][1] <= errors[4, torch.float32][1] + 1e-9


def test_default_accumulation_is_the_parameters_dtype_bit_for_bit():
    model, X, y = case()
    full_batch_loss_and_grad(model, ce, X, y, chunk_size=100)
    default = flat_grad(model)
    full_batch_loss_and_grad(model, ce, X, y, chunk_size=100, accumulate=torch.float32)
    assert torch.equal(default, flat_grad(model))


def test_accumulation_never_in_bf16():
    model, X, y = case()
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        full_batch_loss_and_grad(model, ce, X, y, accumulate=torch.bfloat16)
    with pytest.raises(ValueError):
        full_batch_loss(model, ce, X, y, accumulate=torch.float16)


def test_bf16_autocast_gradient_is_close_to_float32_and_chunk_independent():
    """Autocast runs the matmuls in bf16 (the result differs from float32) yet stays within 1e-2
    relative; across chunk sizes the results differ only by bf16 rounding."""
    model, X, y = case()
    full_batch_loss_and_grad(model, ce, X, y, chunk_size=N)
    fp32 = flat_grad(model)
    grads = {}
    for chunk in (N, 1024, 7):
        res = full_batch_loss_and_grad(model, ce, X, y, chunk_size=chunk, autocast=torch.bfloat16)
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        grads[chunk] = flat_grad(model)
    assert 1e-4 < rel(grads[N], fp32) < 1e-2
    for chunk in (1024, 7):
        assert rel(grads[chunk], grads[N]) < BF16_EPS
    ref_loss, _ = float64_reference(model, X, y)
    assert res.loss == pytest.approx(ref_loss, rel=1e-2)


def test_bf16_autocast_loss_and_evaluate_match_float32_to_bf16_rounding():
    model, X, y = case()
    loss32 = full_batch_loss(model, ce, X, y, chunk_size=500)
    loss16 = full_batch_loss(model, ce, X, y, chunk_size=500, autocast=torch.bfloat16, accumulate=torch.float32)
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, rel=1e-2)
    eval_loss, acc = evaluate(model, ce, X, y, classification=True, chunk_size=500, autocast=torch.bfloat16)
    eval32, acc32 = evaluate(model, ce, X, y, classification=True, chunk_size=500)
    assert eval_loss == pytest.approx(eval32, rel=1e-2) and abs(acc - acc32) < 0.02


def test_config_threads_precision_into_training():
    """A run with autocast trains differently from float32 (bf16 arithmetic was used) but close."""
    base = dict(task="digits", steps=5, seed=0)
    fp32 = runner.run(RunConfig(**base)).final["train_loss"]
    bf16 = runner.run(RunConfig(**base, autocast="bfloat16")).final["train_loss"]
    acc64 = runner.run(RunConfig(**base, accumulate="float64", chunk_size=50)).final["train_loss"]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=1e-2)
    assert acc64 == pytest.approx(fp32, rel=1e-5)


@pytest.mark.parametrize("fields, needle", [
    ({"autocast": "float16"}, "autocast"),
    ({"autocast": "bfloat16", "dtype": "float64"}, "needs float32 parameters"),
    ({"accumulate": "bfloat16"}, "accumulate"),
    ({"accumulate": "float32", "dtype": "float64"}, "would round float64"),
    ({"device": "tpu"}, "device"),
    ({"device": "cuda:one"}, "cuda:K"),
])
def test_bad_precision_or_device_config_is_a_clear_error(fields, needle):
    with pytest.raises(GdlabError, match=needle):
        RunConfig.from_dict(fields)


def test_precision_flag_in_a_subprocess_is_recorded():
    proc = subprocess.run(
        [sys.executable, "-m", "gdlab", "train", "--task", "digits", "--precision", "bf16",
         "--accumulate", "float64", "--steps", "3", "--json", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["environment"]["precision"] == "bf16"
    assert record["environment"]["accumulate"] == "float64"
    assert (record["config"]["dtype"], record["config"]["autocast"]) == ("float32", "bfloat16")


def test_precision_float64_sets_the_dtype(capsys):
    assert main(["train", "--task", "iris", "--precision", "float64", "--steps", "2", "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["environment"]["precision"] == "float64"
    assert (record["config"]["dtype"], record["config"]["autocast"]) == ("float64", None)


def test_precision_conflicting_with_dtype_is_one_line_exit_2(capsys):
    assert main(["train", "--task", "iris", "--precision", "bf16", "--dtype", "float64", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision bf16" in err


@pytest.mark.parametrize("cuda, mps, expected", [
    (False, False, "cpu"), (True, False, "cuda"), (False, True, "mps"), (True, True, "cuda"),
])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert runner.resolve_device("auto") == torch.device(expected)


def test_unavailable_mps_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GdlabError, match="MPS backend is not available"):
        runner.resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line_exit_2(capsys):
    assert main(["train", "--task", "iris", "--device", "cuda", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU is available" in err and "--device cpu" in err


def test_auto_device_is_recorded_as_resolved(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    record = runner.run(RunConfig(task="iris", device="auto", steps=1)).to_record()
    assert record["environment"]["device"] == "cpu" and record["config"]["device"] == "auto"

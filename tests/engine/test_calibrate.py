"""Chunk-size calibration: the fastest candidate per row wins, at bounded cost, cached in process
and on disk, skipped where it must be; the chosen size leaves the gradient exact.

The timing tests use a module whose forward pass sleeps ``overhead + quad * rows**2`` seconds, so
the time per row is ``overhead / c + quad * c``: its minimum, at ``c* = sqrt(overhead / quad)``,
is the independent reference for the choice.
"""

import json
import math
import time

import pytest
import torch
from torch import nn

from gdlab.checkpoint import read_checkpoint
from gdlab.engine import calibrate
from gdlab.engine.calibrate import (
    CACHE_FILE,
    ChunkChoice,
    cache_key,
    candidate_chunk_sizes,
    choose_chunk_size,
    pick_chunk_size,
    time_candidates,
)
from gdlab.engine.calibrate import auto_chunk_size, chunk_choice
from gdlab.engine.objective import full_batch_loss_and_grad
from gdlab.config import RunConfig
from gdlab.run import prepare, restore, run


def ce(out, y):
    return nn.functional.cross_entropy(out, y)


class Costed(nn.Module):
    """A linear model whose forward pass also sleeps ``overhead_s + quad_s * rows**2`` seconds and
    counts the rows it has seen."""

    def __init__(self, overhead_s: float, quad_s: float) -> None:
        super().__init__()
        self.overhead_s, self.quad_s = overhead_s, quad_s
        self.linear = nn.Linear(1, 2)
        self.rows_seen = 0

    def extra_repr(self) -> str:
        return f"overhead_s={self.overhead_s}, quad_s={self.quad_s}"

    def forward(self, x):
        time.sleep(self.overhead_s + self.quad_s * x.shape[0] ** 2)
        self.rows_seen += x.shape[0]
        return self.linear(x)


def data(n, d=1, classes=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test starts with an empty disk cache (its own directory) and an empty process cache."""
    monkeypatch.setenv("GDLAB_CACHE_DIR", str(tmp_path / "cache"))
    calibrate.clear_memory_cache()
    yield tmp_path / "cache"
    calibrate.clear_memory_cache()


def test_candidates_are_powers_of_two_from_256_up_to_the_cap():
    assert candidate_chunk_sizes(9644) == [256, 512, 1024, 2048, 4096, 8192]
    assert candidate_chunk_sizes(512) == [256, 512]
    assert candidate_chunk_sizes(255) == []


def test_pick_takes_the_fastest_or_the_middle_of_those_within_noise():
    """A clear winner wins; candidates within 3% of the fastest are a tie, broken toward the
    middle size (the smaller of two), away from both edges of a flat region."""
    assert pick_chunk_size({256: 9.0, 512: 5.0, 1024: 4.0, 2048: 5.0}) == 1024
    assert pick_chunk_size({256: 13.0, 512: 11.4, 1024: 11.1, 2048: 11.0, 4096: 10.9, 8192: 10.8}) == 2048
    assert pick_chunk_size({256: 13.0, 512: 11.4, 1024: 11.0, 2048: 10.8, 4096: 12.0}) == 1024
    assert pick_chunk_size({256: 1.0, 512: 1.2}) == 256
    assert pick_chunk_size({256: 1.0, 512: 1.0}, near_best=0.0) == 256


def test_timings_are_seconds_per_row_of_the_cost_model():
    """Each measured time per row is at least the slept time per row and not far above it."""
    overhead, quad = 4e-3, 4e-3 / 1024**2
    model = Costed(overhead, quad)
    X, y = data(16384)
    timings = time_candidates(model, ce, X, y, [256, 1024, 4096], budget_s=0.3)
    assert set(timings) == {256, 1024, 4096}
    for c, per_row in timings.items():
        slept = overhead / c + quad * c
        assert slept <= per_row < 2 * slept + 2e-4 / c, (c, per_row, slept)


def test_fastest_per_row_wins_an_interior_optimum():
    """Per-row cost overhead/c + quad*c is smallest at c* = 1024 (25% below its neighbours)."""
    overhead, quad = 10e-3, 10e-3 / 1024**2
    X, y = data(32768)
    choice = choose_chunk_size(Costed(overhead, quad), ce, X, y, max_chunk=10**6, budget_s=0.6)
    assert choice.source == "calibrated" and choice.calibrated
    assert sorted(choice.timings) == [256, 512, 1024, 2048, 4096]  # up to N/8
    assert choice.size == int(math.sqrt(overhead / quad)) == 1024


def test_fixed_cost_per_pass_makes_the_largest_candidate_win():
    X, y = data(16384)
    choice = choose_chunk_size(Costed(3e-3, 0.0), ce, X, y, max_chunk=2048, budget_s=0.3)
    assert choice.size == 2048 and max(choice.timings) == 2048


def test_calibration_cost_is_bounded_in_rows_and_time():
    """At most 2N rows (two gradient evaluations) and about the time budget."""
    n, budget = 16384, 0.5
    model = Costed(2e-3, 2e-3 / 1024**2)
    X, y = data(n)
    start = time.perf_counter()
    choice = choose_chunk_size(model, ce, X, y, max_chunk=10**6, budget_s=budget)
    elapsed = time.perf_counter() - start
    assert model.rows_seen <= 2 * n
    # One round (each candidate at least once) may run past the budget; later rounds may not start.
    one_round = sum(2e-3 + 2e-3 / 1024**2 * c * c for c in choice.timings) * 1.5
    assert elapsed <= budget + one_round + 0.2


def test_small_data_uses_one_chunk_without_timing():
    """N below MIN_CALIBRATION_ROWS: one chunk of N rows, as before calibration existed."""
    model = Costed(0.0, 0.0)
    X, y = data(2000)
    choice = choose_chunk_size(model, ce, X, y, max_chunk=10**6)
    assert choice == ChunkChoice(2000, "memory", reason=choice.reason) and not choice.calibrated
    assert "2000" in choice.reason
    assert model.rows_seen == 0


def test_batchnorm_and_calibrate_off_use_the_memory_cap():
    X, y = data(16384, d=4)
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    choice = choose_chunk_size(bn, ce, X, y, max_chunk=3000)
    assert (choice.size, choice.source, choice.calibrated) == (3000, "memory", False)
    assert "BatchNorm" in choice.reason
    off = choose_chunk_size(nn.Linear(4, 2), ce, X, y, max_chunk=3000, calibrate=False)
    assert (off.size, off.source) == (3000, "memory")


def test_cached_in_process_then_on_disk(fresh_cache):
    """(busy_share=0: a sleeping model uses no CPU, which would otherwise read as a busy machine.)"""
    model = Costed(1e-3, 0.0)
    X, y = data(16384)
    first = choose_chunk_size(model, ce, X, y, max_chunk=4096, budget_s=0.2, busy_share=0.0)
    seen = model.rows_seen
    assert first.source == "calibrated" and seen > 0

    again = choose_chunk_size(model, ce, X, y, max_chunk=4096)
    assert (again.size, again.source) == (first.size, "cache") and model.rows_seen == seen

    calibrate.clear_memory_cache()
    from_disk = choose_chunk_size(model, ce, X, y, max_chunk=4096)
    assert (from_disk.size, from_disk.source) == (first.size, "cache") and model.rows_seen == seen
    stored = json.loads((fresh_cache / CACHE_FILE).read_text())
    assert stored == {cache_key(model, X, None, 2048): first.size}  # largest candidate: N/8


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "eight"}', "\x00\xff"])
def test_corrupt_cache_file_is_ignored_and_rewritten(fresh_cache, content):
    fresh_cache.mkdir(parents=True)
    (fresh_cache / CACHE_FILE).write_text(content, errors="surrogateescape")
    model = Costed(1e-3, 0.0)
    X, y = data(16384)
    choice = choose_chunk_size(model, ce, X, y, max_chunk=1024, budget_s=0.1, busy_share=0.0)
    assert choice.source == "calibrated"
    assert json.loads((fresh_cache / CACHE_FILE).read_text()) == {cache_key(model, X, None, 1024): choice.size}


def test_calibration_on_a_busy_cpu_is_not_cached_on_disk(fresh_cache, monkeypatch):
    """When the process got little CPU time while timing (here: none, the clock is frozen), the
    result serves this process but is not written for later ones."""
    monkeypatch.setattr(calibrate, "_cpu_clock", lambda: 0.0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    X, y = data(16384, d=4)
    busy = choose_chunk_size(model, ce, X, y, max_chunk=2048, budget_s=0.1)
    assert busy.source == "calibrated" and "busy" in busy.reason
    assert not (fresh_cache / CACHE_FILE).exists()
    assert choose_chunk_size(model, ce, X, y, max_chunk=2048).source == "cache"  # in process


def test_unwritable_cache_directory_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GDLAB_CACHE_DIR", str(blocker / "sub"))  # a directory under a file
    X, y = data(16384)
    assert choose_chunk_size(Costed(1e-3, 0.0), ce, X, y, max_chunk=1024, budget_s=0.1).source == "calibrated"


def test_cache_key_separates_architecture_shape_dtype_threads_and_autocast():
    X, _ = data(16, d=4)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    key = cache_key(model, X, None, 4096)
    assert key == cache_key(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), X, None, 4096)
    others = [
        cache_key(nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 2)), X, None, 4096),
        cache_key(model, X.reshape(16, 2, 2), None, 4096),
        cache_key(model.double(), X.double(), None, 4096),
        cache_key(model, X, torch.bfloat16, 4096),
        cache_key(model, X, None, 2048),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        others.append(cache_key(model, X, None, 4096))
    finally:
        torch.set_num_threads(threads)
    assert len({key, *others}) == len(others) + 1


class CallCounter(nn.Module):
    """Identity that counts its calls in a buffer (like running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


def test_calibration_leaves_gradients_buffers_and_rng_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), CallCounter(), nn.Dropout(0.5), nn.Linear(16, 2))
    X, y = data(16384, d=4)
    sentinels = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinels):
        p.grad = s
    weights = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    choice = choose_chunk_size(model, ce, X, y, max_chunk=4096, budget_s=0.2)
    assert choice.source == "calibrated"
    assert all(p.grad is s and bool((s == 7.0).all()) for p, s in zip(model.parameters(), sentinels))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert float(model[1].calls) == 0.0
    assert torch.equal(torch.get_rng_state(), rng)


def test_default_chunk_size_is_calibrated_and_the_gradient_stays_exact():
    """full_batch_loss_and_grad without chunk_size uses the calibrated size and still equals one
    autograd pass over the whole set (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    X, y = data(12000, d=6, classes=3, dtype=torch.float64)
    params = list(model.parameters())
    ref = torch.autograd.grad(ce(model(X), y), params)
    res = full_batch_loss_and_grad(model, ce, X, y)
    choice = chunk_choice(model, ce, X, y)
    assert choice.source == "cache"  # calibrated by the call above
    assert choice.size in candidate_chunk_sizes(min(auto_chunk_size(model, X), 12000 // 8))
    assert res.num_chunks == math.ceil(12000 / choice.size)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-12)


def test_run_record_says_which_chunk_size_and_whether_calibrated():
    config = dict(task="spirals", n_samples=12000, steps=2, eval_every=1)
    calibrated = run(RunConfig(**config)).to_record()
    env = calibrated["environment"]
    assert env["chunk_source"] == "calibrated" and env["chunk_calibrated"] is True
    assert env["chunk_size"] == calibrated["config"]["chunk_size"] in candidate_chunk_sizes(9600 // 8)

    cached = run(RunConfig(**config)).to_record()["environment"]
    assert (cached["chunk_source"], cached["chunk_size"]) == ("cache", env["chunk_size"])

    deterministic = run(RunConfig(**config, deterministic=True)).to_record()["environment"]
    assert deterministic["chunk_source"] == "memory" and deterministic["chunk_calibrated"] is False
    given = run(RunConfig(**config, chunk_size=1000)).to_record()["environment"]
    assert (given["chunk_source"], given["chunk_size"], given["chunk_calibrated"]) == ("given", 1000, False)


def test_resume_keeps_the_checkpointed_chunk_size(tmp_path):
    """A calibrated size can differ between processes; a resumed run keeps the checkpointed one,
    so it continues with exactly the same chunks."""
    config = RunConfig(task="spirals", n_samples=12000, steps=2, checkpoint_every=1)
    result = run(config, checkpoint_dir=tmp_path)
    payload = read_checkpoint(tmp_path)
    assert payload["chunk_size"] == result.environment["chunk_size"]
    payload["chunk_size"] = 300
    prepared = prepare(RunConfig.from_dict(payload["config"]))
    restore(prepared, payload)
    assert (prepared.chunk_size, prepared.chunk.source) == (300, "checkpoint")

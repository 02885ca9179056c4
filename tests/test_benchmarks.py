"""The benchmark scripts' shared helpers and the engine benchmark's output (its shape, not its
timings: those depend on the machine and its load)."""

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


common = load_common()


@pytest.mark.parametrize("value, target, expected", [
    (1.0, "<= 1.05", True), (1.06, "<= 1.05", False), (1.6, ">= 1.6", True), (1.59, ">=1.6", False),
    (0.5, "< 0.5", False), (0.49, " < 0.5 ", True), (2.0, "> 1e0", True), (1.0, None, None), (1.0, "< x", None),
])
def test_check_parses_targets(value, target, expected):
    assert common.check(value, target) is expected


def test_median_time_is_the_median_of_the_timed_calls():
    """One untimed warm-up call sleeps 200 ms, the timed ones 1, 20 and 10 ms: the median is
    about 10 ms (sleep only overshoots), never the warm-up's 200."""
    delays = iter([0.2, 0.001, 0.02, 0.01])
    seconds = common.median_time(lambda: time.sleep(next(delays)), repeats=3, warmup=1)
    assert 0.01 <= seconds < 0.02


def test_median_rounds_runs_every_contender_each_round_and_drops_the_warmup():
    """Contenders return their own measurements (a warm-up 100, then 3, 1, 2 and 7, 9, 8): the
    medians are 2 and 8; with shuffle, each round still runs each contender exactly once."""
    calls: list[str] = []

    def contender(name):
        def go():
            calls.append(name)
            return next(values[name])
        return go

    for shuffle in (False, True):
        values = {"a": iter([100, 3, 1, 2]), "b": iter([100, 7, 9, 8])}
        calls.clear()
        medians = common.median_rounds({"a": contender("a"), "b": contender("b")}, 3, shuffle=shuffle)
        assert medians == {"a": 2, "b": 8}
        assert all(sorted(calls[i:i + 2]) == ["a", "b"] for i in range(0, 8, 2))
    timed = common.timed(lambda: time.sleep(0.01) or "result")
    assert timed() >= 0.01 and timed.last == "result"


def test_report_fills_ok_and_writes_json(tmp_path, capsys):
    rows = [common.Row("engine", "case", "ratio", 1.02, target="<= 1.05"),
            common.Row("engine", "case", "slow", 2.0, target="<= 1.05"),
            common.Row("engine", "case", "cost", float("nan"), unit="s"),
            common.Row("engine", "case", "forced", 3.0, target="<= 1", ok=True)]
    path = common.report("demo", rows, meta={"k": 1}, out_dir=tmp_path / "results")
    assert path == tmp_path / "results" / "demo.json"
    data = json.loads(path.read_text())
    assert [r["ok"] for r in data["rows"]] == [True, False, None, True]
    assert data["rows"][2]["value"] is None  # NaN is not JSON
    assert data["meta"] == {"k": 1}
    assert {"date", "cpu", "cores", "torch_threads", "torch", "python", "device"} <= set(data["machine"])
    assert "ratio" in capsys.readouterr().out


def test_base_parser_options():
    args = common.base_parser("x").parse_args(["--quick", "--repeats", "3", "--out", "d"])
    assert (args.quick, args.repeats, args.out) == (True, 3, Path("d"))
    assert common.base_parser("x").parse_args([]).quick is False


def test_engine_benchmark_smoke_run_writes_its_table(tmp_path):
    """The smallest run of benchmarks/engine.py writes every row; both memory children read the
    chunk size the calibration child cached, whatever the machine's load (the calibration child
    caches even on a busy CPU, so a contended test machine cannot change where a size comes from)."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "engine.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "engine.json").read_text())
    assert set(data) == {"machine", "meta", "rows"}
    metrics = {row["metric"]: row for row in data["rows"]}
    assert set(metrics) == {"gdlab / floor", "gdlab / best hand loop", "naive / gdlab",
                            "peak memory beyond data", "bf16 autocast / float32", "float64 accumulation / float32",
                            "chunk calibration cost"}
    for row in data["rows"]:
        assert row["benchmark"] == "engine" and math.isfinite(row["value"]) and row["value"] > 0
        assert (row["ok"] is None) == (row["target"] is None)
    assert metrics["chunk calibration cost"]["unit"] == "s"
    assert {"gdlab", "floor", "naive"} <= set(data["meta"]["seconds"])
    calibrated = data["meta"]["memory_calibration"]
    assert calibrated["chunk_source"] == "calibrated"
    for child in data["meta"]["memory"].values():
        assert (child["chunk_source"], child["chunk_size"]) == ("cache", calibrated["chunk_size"])
    assert set(data["meta"]["memory"]) == {"10000", "40000"} and data["meta"]["size"] == "smoke"
    assert "gdlab / best hand loop" in proc.stdout

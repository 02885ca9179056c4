"""Examples 6-9 run end to end with --quick and their self-checks pass; a broken expectation fails.

Each example checks its outcome against references outside gdlab (float64 autograd, closed forms,
theorems, scikit-learn, published accuracies, the operating system's peak memory) and exits 1 when
a check fails, so a passing run means those references agreed with gdlab. The scripts run in
subprocesses, as a user runs them.
"""

from __future__ import annotations

import numpy as np
import pytest

SCRIPTS = {
    "06_lstm_full_batch.py": ["06_lstm_full_batch.png"],
    "07_stability_threshold.py": ["07_stability_threshold.png", "07_remedies.png"],
    "08_image_classification.py": ["08_image_classification.png"],
    "09_scaling.py": ["09_scaling.png"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs_quick_and_its_self_checks_pass(script, tmp_path, assert_quick_run_passes):
    assert_quick_run_passes(script, SCRIPTS[script], tmp_path)


def test_stability_example_with_a_decay_too_slow_to_rescue_fails_its_check(tmp_path, run_example):
    """lr decay 0.999 per step leaves the lr above 2/sharpness for hundreds of steps, so the network
    diverges as without decay: the decay remedy's check must fail and the script exit 1, while the
    remedies that do not depend on --decay still pass."""
    result = run_example("07_stability_threshold.py", "--quick", "--decay", "0.999", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert any("lr decay exp:0.999" in line and "rescues the run" in line for line in failed), result.stdout[-3000:]
    assert "PASS remedy 'Adam, lr 1e-3' rescues the run" in result.stdout


@pytest.mark.parametrize("script, args", [
    ("07_stability_threshold.py", ["--decay", "1.5"]),
    ("07_stability_threshold.py", ["--clip-norm", "-1"]),
    ("06_lstm_full_batch.py", ["--chunk-size", "0"]),
    ("09_scaling.py", ["--chunk-size", "zero"]),
    ("08_image_classification.py", ["--workers", "0"]),
    ("08_image_classification.py", ["--adam-lr", "0.1", "0.01"]),
])
def test_bad_command_line_values_exit_2_with_one_line(script, args, run_example_in_process):
    result = run_example_in_process(script, *args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1, result.stderr


def test_known_quadratic_has_the_hessian_it_promises(load_example):
    """The case-7 design: A = [X, 1] has A^T A / N = diag(10, 4, 1, 0.25, 1) (numpy, float64)."""
    module = load_example("07_stability_threshold.py")
    X, y = module.known_quadratic(200, (10.0, 4.0, 1.0, 0.25), seed=3)
    A = np.column_stack([X, np.ones(len(y))])
    np.testing.assert_allclose(A.T @ A / len(y), np.diag([10.0, 4.0, 1.0, 0.25, 1.0]), atol=1e-12)


def test_affine_fit_recovers_the_fixed_and_per_row_cost(load_example):
    """Case 9's T = T0 + c N fit returns T0 and c exactly from noiseless times, and the relative
    least squares are not dominated by the largest N."""
    module = load_example("09_scaling.py")
    ns = np.array([1e3, 1e4, 1e5, 1e6])
    t0, c = module.affine_fit(ns, 2e-3 + 5e-7 * ns)
    assert t0 == pytest.approx(2e-3, rel=1e-9) and c == pytest.approx(5e-7, rel=1e-9)
    noisy = (2e-3 + 5e-7 * ns) * np.array([1.1, 1.0, 1.0, 1.0])
    t0_noisy, _ = module.affine_fit(ns, noisy)
    assert 2e-3 < t0_noisy < 2.4e-3

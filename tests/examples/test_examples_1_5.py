"""Examples 1-5 run end to end with --quick and their self-checks pass; a broken expectation fails.

Each example checks its own outcome against an independent reference (numpy lstsq, closed forms,
finite differences, scikit-learn) and exits 1 if a check fails, so a passing run here means those
references agreed with gdlab. The scripts run in subprocesses, as a user runs them.
"""

from __future__ import annotations

import pytest

SCRIPTS = {
    "01_linear_regression.py": ["01_linear_regression.png"],
    "02_learning_rate_selection.py": ["02_learning_rate_selection.png"],
    "03_regimes.py": ["03_regimes.png"],
    "04_backprop_network.py": ["04_backprop_network.png"],
    "05_regularization.py": ["05_regularization.png"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs_quick_and_its_self_checks_pass(script, tmp_path, assert_quick_run_passes):
    assert_quick_run_passes(script, SCRIPTS[script], tmp_path)


def test_linear_regression_with_a_step_above_two_over_lambda_max_fails_its_check(tmp_path, run_example):
    """lambda_max(A^T A / m) of the case-1 data is 2.418 (numpy eigvalsh), so lr 1.0 > 2/2.418 = 0.827
    diverges and GD cannot reach the lstsq solution: the script must say so and exit non-zero."""
    result = run_example("01_linear_regression.py", "--quick", "--lr", "1.0", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert any("reaches the numpy.linalg.lstsq solution" in line for line in failed), result.stdout[-3000:]
    # The other checks do not depend on --lr and still hold.
    assert "PASS gdlab's sharpness" in result.stdout


def test_bad_command_line_values_exit_2_with_one_line(tmp_path, run_example, run_example_in_process):
    """The first case as a real process (the status a shell sees), the others in this process."""
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    for i, args in enumerate((["--lr", "-1"], ["--steps", "0"], ["--out", str(a_file)])):
        if i == 0:
            result = run_example("01_linear_regression.py", *args, timeout=60)
        else:
            result = run_example_in_process("01_linear_regression.py", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, result.stderr


def test_checks_report_every_claim_and_fail_on_any_failure(capsys, load_example):
    shared = load_example("_shared.py", "examples_shared")
    checks = shared.Checks()
    assert checks.expect(True, "first claim [holds]", "1.0") is True
    assert shared.Checks().finish() == 1  # no checks recorded is not a pass
    assert checks.finish() == 0
    assert checks.expect(False, "second claim", "2.0") is False
    assert checks.finish() == 1
    out = capsys.readouterr().out
    assert "PASS first claim [holds]  (1.0)" in out
    assert "FAIL second claim  (2.0)" in out

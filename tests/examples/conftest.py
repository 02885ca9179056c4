"""Fixtures for the example tests: run a script as a user does (a subprocess, one thread, figures
to a folder), check a quick run, import a script as a module, or call its ``main()`` in this
process with a given command line (for argument errors, which exit before any work)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_example(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=EXAMPLES.parent, check=False)


def _assert_quick_run_passes(script: str, figures: list[str], out_dir: Path) -> None:
    """``script --quick`` exits 0, every self-check passed, and each figure is a non-trivial PNG."""
    result = _run_example(script, "--quick", "--out", str(out_dir))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in result.stdout
    assert "checks passed" in result.stdout
    for png in figures:
        path = out_dir / png
        assert path.is_file() and path.stat().st_size > 10_000, f"{png} missing or empty"
        assert path.read_bytes()[:8] == PNG_MAGIC


def _load_example(script: str, name: str | None = None):
    """Import an example script (or ``_shared.py``) as a module, its folder on sys.path as when
    run directly."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name or f"example_{script[:2]}", EXAMPLES / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.fixture
def run_example():
    return _run_example


@pytest.fixture
def assert_quick_run_passes():
    return _assert_quick_run_passes


@pytest.fixture
def load_example():
    return _load_example


@pytest.fixture
def run_example_in_process(monkeypatch, capsys):
    """``call(script, *args)``: the script's ``main()`` with ``sys.argv`` set to its command line,
    in this process; returns a CompletedProcess (its exit status, stdout, stderr) like
    :func:`_run_example`. An exception other than SystemExit propagates and fails the test."""
    def call(script: str, *args: str) -> subprocess.CompletedProcess:
        module = _load_example(script)
        monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
        capsys.readouterr()
        try:
            code = module.main()
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([script, *args], code, out, err)
    return call

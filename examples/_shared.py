"""Helpers shared by the example scripts: arguments, self-checks, tables and figures.

Each example imports from here (`from _shared import ...`); the script's folder is on `sys.path`
when it is run as `python examples/NAME.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

# The examples write PNG files and never open a window, also on machines without a display.
matplotlib.use("Agg")

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

DEFAULT_OUT = Path(__file__).resolve().parent / "output"

_console = Console(highlight=False, soft_wrap=True)
if not _console.is_terminal:
    # Piped or captured output (the test suite, `> log.txt`) would otherwise wrap tables at 80.
    _console = Console(highlight=False, soft_wrap=True, width=140)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value exits 2 with argparse's one-line message)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmHWM`` the peak RSS, ``VmRSS`` the current), MiB
    (Linux only)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def parse_args(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the example's command line: `--quick`, `--out DIR` and the example's own options.

    `--quick` asks for small sizes (the test suite runs every example that way); `--out` is the
    folder for figures (default `examples/output/`), created if missing. A bad argument exits 2
    with argparse's message; an `--out` that is a file or cannot be created exits 2 with one line.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few steps (used by the test suite)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder for the figures (default {DEFAULT_OUT})"
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.out.exists() and not args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a file; give a folder path (it is created if missing)\n")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.exit(2, f"error: cannot create --out {args.out} ({exc.strerror}); choose a writable folder\n")
    return args


@dataclass
class _Check:
    ok: bool
    claim: str
    detail: str


@dataclass
class Checks:
    """The example's self-checks: each claim of the expected outcome, and whether it held."""

    results: list[_Check] = field(default_factory=list)

    def expect(self, ok: bool, claim: str, detail: str = "") -> bool:
        """Record one check (`claim` says what should hold, `detail` the measured numbers).

        Returns `ok`, so a script can skip work that depends on a failed check.
        """
        self.results.append(_Check(bool(ok), claim, detail))
        return bool(ok)

    def finish(self) -> int:
        """Print every check as PASS/FAIL; return the exit status: 0 if all passed, else 1."""
        _console.print("\nself-checks:")
        for check in self.results:
            mark = "[green]PASS[/green]" if check.ok else "[bold red]FAIL[/bold red]"
            detail = f"  ({escape(check.detail)})" if check.detail else ""
            _console.print(f"  {mark} {escape(check.claim)}{detail}")
        if not self.results:
            _console.print("  [bold red]FAIL[/bold red] no checks were recorded")
            return 1
        failed = sum(not check.ok for check in self.results)
        _console.print(f"{len(self.results) - failed}/{len(self.results)} checks passed")
        return 0 if failed == 0 else 1


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    """Print a rich table; floats are shown with 4 significant digits, other values as str()."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(_cell(value)) for value in row))
    _console.print(table)


def save_figure(fig, out_dir: Path, name: str) -> Path:
    """Save `fig` as `out_dir/name.png` (120 dpi), close it, print and return the path."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / f"{name.removesuffix('.png')}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {path}")
    return path

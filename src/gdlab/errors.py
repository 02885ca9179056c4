"""The project's own error type for user mistakes, and name suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GdlabError(Exception):
    """A user mistake (bad config, data, CLI argument or file).

    The message is one line that names the problem and the fix; the CLI prints it and exits 2.
    Line breaks that come from user input (a key or a cell holding a newline) are escaped, so the
    message stays on one line.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice to `name`, or "" if none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> GdlabError:
    """Build the error for an unknown `kind` name (task, model, optimizer, ...), with a suggestion."""
    choices = sorted(choices)
    return GdlabError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )


class NonFiniteError(RuntimeError):
    """Raised by guard policy ``raise`` when the loss or gradient stops being finite."""


class WorkerDiedError(RuntimeError):
    """A study worker process died (killed, out of memory); the stored runs are intact and the
    same study can be run again to resume. Not a user mistake: the CLI exits with status 1."""

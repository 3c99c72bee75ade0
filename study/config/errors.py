"""The one exception type for problems a user can cause and fix, and how a command reports it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class StudyError(Exception):
    """Bad input, configuration or files: the message names the culprit and what to do.

    The command-line entry points print the message on one line and exit with code 2.
    """


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first line, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class StudyInterrupted(Exception):  # noqa: N818 (an interruption, not an error)
    """The study stopped before its trials finished (Ctrl-C, a stop signal); it can be resumed."""


class StudyIncomplete(Exception):  # noqa: N818 (an outcome, not an error of the user's)
    """The study ran to its end, but some trials failed or fell short of their epochs.

    What exists is written (results, report); ``--resume`` reruns what is missing.
    """


def run_cli(main: Callable[[], Any]) -> int:
    """Runs ``main``; returns the exit code: a ``StudyError`` becomes one line on stderr and 2.

    A study that ended with failed or unfinished trials exits with 3, an interrupted one
    with 130, each after saying how to resume it.
    """
    try:
        main()
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StudyIncomplete as incomplete:
        print(f"incomplete: {incomplete}", file=sys.stderr)
        return 3
    except StudyInterrupted as interrupted:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

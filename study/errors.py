"""The one exception type for problems a user can cause and fix."""


class StudyError(Exception):
    """Bad input, configuration or files: the message names the culprit and what to do.

    The command-line entry points print the message on one line and exit with code 2.
    """


class StudyInterrupted(Exception):  # noqa: N818 (an interruption, not an error)
    """The study stopped before its trials finished (Ctrl-C, a stop signal); it can be resumed."""


class StudyIncomplete(Exception):  # noqa: N818 (an outcome, not an error of the user's)
    """The study ran to its end, but some trials failed or fell short of their epochs.

    What exists is written (results, report); ``--resume`` reruns what is missing.
    """

"""How the console states figures and time, and ``Progress`` with time left for a batch of
work (reruns, models of the original recipe, a deletion request's models). The search's own
lines: ``trainables/trial_lines.py``. No Ray here: ``analysis`` and ``study.forget`` use it too.
"""

from __future__ import annotations

import math
import time
from typing import Any


def duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def number(value: Any) -> str:
    """A hyperparameter or figure in 3 significant digits (``0.000443``, ``1.96``, ``adam``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def time_left(done: float, total: float, elapsed: float) -> str:
    """``about 3m05s left`` at the pace so far; empty before anything is done."""
    if done <= 0 or elapsed <= 0 or total <= done:
        return ""
    return f"about {duration(elapsed / done * (total - done))} left"


class Progress:
    """``what: 3/8 done (the last one's name), 45 s, about 1m30s left``: a line when an item is
    done at least ``every_s`` after the last line (items done side by side share one), and
    always for the last item."""

    def __init__(self, what: str, total: int, every_s: float = 15.0) -> None:
        self.what, self.total, self.done, self.every_s = what, total, 0, every_s
        self.started = self._told = time.monotonic()

    def step(self, name: str) -> None:
        """One more item done; prints the line when it is due."""
        self.done += 1
        now = time.monotonic()
        if self.done < self.total and now - self._told < self.every_s:
            return
        self._told, elapsed = now, now - self.started
        left = time_left(self.done, self.total, elapsed)
        tail = f", {left}" if left and self.done < self.total else ""
        print(f"{self.what}: {self.done}/{self.total} done ({name}), {duration(elapsed)}{tail}", flush=True)


class EpochLines:
    """A ``run_epochs`` report callback that prints one line per report of a single run:
    ``unlearning: epoch 10/30, forget Dice 0.412, retain Dice 0.803, 24 s, about 48 s left``.

    Picklable, so a Ray task can carry it (its lines reach the driver through Ray's log).
    """

    def __init__(self, what: str, epochs: int) -> None:
        self.what, self.epochs = what, epochs
        self.started: float | None = None

    def __call__(self, metrics: dict[str, float], checkpoint: object = None) -> None:
        now = time.monotonic()
        if self.started is None:  # the clock starts in the process that trains
            self.started = now - metrics.get("seconds_train", 0.0) - metrics.get("seconds_eval", 0.0)
        epoch, elapsed = int(metrics["epoch"]), now - self.started
        state = ", diverged" if metrics.get("diverged") else ""
        left = time_left(epoch, self.epochs, elapsed)
        print(
            f"{self.what}: epoch {epoch}/{self.epochs}, forget Dice {number(metrics['forget_dice'])}, "
            f"retain Dice {number(metrics['retain_dice'])}{state}, {duration(elapsed)}"
            + (f", {left}" if left else ""),
            flush=True,
        )

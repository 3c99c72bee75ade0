"""The search's console: one line per trial as it starts and ends (its hyperparameters; its
objectives at each horizon), and every so often a status line with the objectives' front, as
a Tune callback (Tune's own tables come back with ``--verbose``)."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from study.config import OBJECTIVES, EpochSchedule, StudyConfig
from study.run.console import duration, number, time_left


class TrialLines(Callback):
    """One line per trial started, ended and failed, and every ``every_s`` seconds the search's
    status: trials done / running / pending, time elapsed and left, the objectives' front.

    Times are this session's (a resumed study counts from its resume); restored from Tune's
    saved state, the callback starts its counts again.
    """

    def __init__(self, config: StudyConfig, every_s: float = 60.0) -> None:
        self.objectives = OBJECTIVES[config.objective]
        self.horizons = list(config.horizons)
        self.max_epochs = config.max_epochs
        self.reported = list(EpochSchedule.of(config).reported_epochs())
        self.total = len(config.strategies) * config.num_samples
        self.every_s = every_s
        self._reset()

    def _reset(self) -> None:
        self.started = self._last = time.monotonic()
        self.epochs_now = 0  # epochs reported in this session
        self.front: list[tuple[float, float, str]] = []  # (objective 1, objective 2, "trial@epoch")
        self.seen: dict[str, dict[int, tuple[float, float]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        keep = ("objectives", "horizons", "max_epochs", "reported", "total", "every_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @staticmethod
    def _name(trial: Any) -> str:
        return f"{trial.config.get('strategy', 'trial')} {trial.trial_id}"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        params = {k: v for k, v in trial.config.items() if k not in ("strategy", "trial_number")}
        shown = " ".join(f"{k} {number(v)}" for k, v in sorted(params.items()))
        print(f"trial {self._name(trial)} started: {shown}", flush=True)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        epoch = int(result.get("epoch", 0))
        previous = self.seen.setdefault(trial.trial_id, {})
        before = [e for e in (previous or self.reported) if e < epoch]  # the report before this one
        self.epochs_now += epoch - max(before, default=0)
        a, b = (float(result.get(o, math.nan)) for o in self.objectives)
        previous[epoch] = (a, b)
        if math.isfinite(a) and math.isfinite(b) and not result.get("diverged"):
            self._add_to_front(a, b, f"{trial.trial_id}@{epoch}")

    def _add_to_front(self, a: float, b: float, name: str) -> None:
        if any(x >= a and y >= b for x, y, _ in self.front):
            return
        self.front = [p for p in self.front if not (a >= p[0] and b >= p[1])] + [(a, b, name)]

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epoch = int(last.get("epoch", 0))
        seen = self.seen.get(trial.trial_id, {})
        shown = [e for e in self.horizons if e in seen] or ([epoch] if epoch in seen else [])
        figures = " | ".join(
            f"@{e} " + " ".join(f"{o} {number(v)}" for o, v in zip(self.objectives, seen[e], strict=True))
            for e in shown
        )
        how = f"diverged at epoch {epoch}" if last.get("diverged") else f"done at epoch {epoch}"
        print(f"trial {self._name(trial)} {how}: {figures}".rstrip(": "), flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        print(f"trial {self._name(trial)} failed after epoch {epoch} (Tune's error above)", flush=True)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(self.status(trials), flush=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        print(self.status(trials), flush=True)

    def status(self, trials: list[Any]) -> str:
        """``search: 12/28 done, 2 running, 14 pending; 4m10s, about 6m left; front of 3: ...``."""
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = self.total - done - running
        elapsed = time.monotonic() - self.started
        left_epochs = sum(
            self.max_epochs - int((t.last_result or {}).get("epoch", 0))
            for t in trials
            if t.status not in ("TERMINATED", "ERROR")
        ) + self.max_epochs * max(0, self.total - len(trials))
        left = time_left(self.epochs_now, self.epochs_now + left_epochs, elapsed)
        line = f"search: {done}/{self.total} done, {running} running, {pending} pending; {duration(elapsed)}"
        line += f", {left}" if left else ""
        if self.front:
            a, b = self.objectives
            best_a, best_b = max(self.front), max(self.front, key=lambda p: p[1])
            line += (
                f"; front of {len(self.front)}: best {a} {number(best_a[0])} ({b} {number(best_a[1])}), "
                f"best {b} {number(best_b[1])} ({a} {number(best_b[0])})"
            )
        return line

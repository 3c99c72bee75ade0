"""One Optuna define-by-run search space per strategy (``search_spaces/spaces.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from search_spaces.spaces import SEARCH_SPACES


class _BoundedTrial:
    """An ``optuna.Trial`` whose numeric suggestions use the study's overridden bounds."""

    def __init__(self, trial: optuna.Trial, bounds: dict[str, tuple[float, float]]) -> None:
        self._trial = trial
        self._bounds = bounds

    def suggest_float(self, name: str, low: float, high: float, **kwargs: Any) -> float:
        return self._trial.suggest_float(name, *self._bounds.get(name, (low, high)), **kwargs)

    def suggest_int(self, name: str, low: int, high: int, **kwargs: Any) -> int:
        low, high = self._bounds.get(name, (low, high))
        return self._trial.suggest_int(name, int(low), int(high), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


class _Recorder:
    """A stand-in trial that records each numeric suggestion's ``(low, high, log)``."""

    def __init__(self) -> None:
        self.numeric: dict[str, tuple[float, float, bool]] = {}

    def suggest_float(self, name: str, low: float, high: float, log: bool = False, **_: Any) -> float:
        self.numeric[name] = (low, high, log)
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False, **_: Any) -> int:
        self.numeric[name] = (low, high, log)
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return choices[0]


def numeric_bounds() -> dict[str, tuple[float, float, bool]]:
    """``{name: (low, high, log)}`` of every numeric hyperparameter any strategy searches."""
    recorder = _Recorder()
    for space, _ in SEARCH_SPACES.values():
        space(recorder)
    return recorder.numeric


@dataclass(frozen=True)
class DefineByRun:
    """The space ``OptunaSearch`` calls for ``strategy`` (picklable, so Tune can checkpoint it).

    ``bounds`` overrides numeric ranges (``((name, low, high), ...)``). Besides the suggested
    hyperparameters, a trial's config carries its Optuna trial number, which seeds the trial.
    """

    strategy: str
    bounds: tuple[tuple[str, float, float], ...] = ()

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        space, _ = SEARCH_SPACES[self.strategy]
        space(_BoundedTrial(trial, {name: (low, high) for name, low, high in self.bounds}))
        return {"trial_number": trial.number}


def starting_point(strategy: str, bounds: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """The hand-picked configuration ``strategy``'s search evaluates first, inside ``bounds``."""
    start = dict(SEARCH_SPACES[strategy][1])
    for name, (low, high) in (bounds or {}).items():
        if name in start:
            start[name] = type(start[name])(min(max(start[name], low), high))
    return start


__all__ = ["SEARCH_SPACES", "DefineByRun", "numeric_bounds", "starting_point"]

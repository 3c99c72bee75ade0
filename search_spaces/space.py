"""What the searcher needs of a strategy: its define-by-run function and the configuration its
search evaluates first (``SearchSpace``), the study's bounds on it, and what it suggests.

``search_spaces/registry.py`` builds one per registered strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import optuna

SpaceFunction = Callable[[optuna.Trial], None]


@dataclass(frozen=True)
class SearchSpace:
    """A strategy's define-by-run ``function`` and its hand-picked ``start`` configuration."""

    function: SpaceFunction
    start: dict[str, Any]


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
    """A stand-in trial that records every suggestion, and each numeric one's ``(low, high, log)``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.numeric: dict[str, tuple[float, float, bool]] = {}

    def suggest_float(self, name: str, low: float, high: float, log: bool = False, **_: Any) -> float:
        self.names.append(name)
        self.numeric[name] = (low, high, log)
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False, **_: Any) -> int:
        self.names.append(name)
        self.numeric[name] = (low, high, log)
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.names.append(name)
        return choices[0]


def suggested_names(function: SpaceFunction) -> list[str]:
    """The names of the hyperparameters ``function`` suggests, in order."""
    recorder = _Recorder()
    function(recorder)
    return recorder.names


def numeric_bounds(spaces: Iterable[SearchSpace]) -> dict[str, tuple[float, float, bool]]:
    """``{name: (low, high, log)}`` of every numeric hyperparameter the ``spaces`` search."""
    recorder = _Recorder()
    for space in spaces:
        space.function(recorder)
    return recorder.numeric


@dataclass(frozen=True)
class DefineByRun:
    """The define-by-run function ``OptunaSearch`` calls (picklable, so Tune can checkpoint it).

    ``bounds`` overrides numeric ranges (``((name, low, high), ...)``). Besides the suggested
    hyperparameters, a trial's config carries its Optuna trial number, which seeds the trial.
    """

    function: SpaceFunction
    bounds: tuple[tuple[str, float, float], ...] = ()

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        self.function(_BoundedTrial(trial, {name: (low, high) for name, low, high in self.bounds}))
        return {"trial_number": trial.number}


def starting_point(space: SearchSpace, bounds: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """The hand-picked configuration ``space``'s search evaluates first, inside ``bounds``."""
    start = dict(space.start)
    for name, (low, high) in (bounds or {}).items():
        if name in start:
            start[name] = type(start[name])(min(max(start[name], low), high))
    return start

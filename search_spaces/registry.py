"""The strategy registry: each strategy registered together with its search space.

``@space_for(Strategy)`` on a define-by-run function in ``search_spaces/spaces.py`` (or a call
``register(Strategy, function)``) is the one step that adds a strategy to the study. It
checks, before anything trains, that the space suggests exactly the hyperparameters the
strategy and the epoch loop take; their defaults (``Strategy`` fields, ``LoopSettings``)
become the search's hand-picked start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from search_spaces.space import SearchSpace, SpaceFunction, numeric_bounds, suggested_names
from study.config import StudyConfig
from trainables.settings import LoopSettings
from trainables.strategy import Strategy


@dataclass(frozen=True)
class Registered:
    """A strategy class and its search space."""

    strategy: type[Strategy]
    search: SearchSpace


#: Strategy name -> its class and search space, in registration order.
STRATEGIES: dict[str, Registered] = {}


def register(strategy: type[Strategy], space: SpaceFunction) -> Registered:
    """Adds ``strategy`` with the define-by-run ``space``; a ``TypeError`` if they disagree."""
    start = {**LoopSettings.start(), **strategy.hyperparameters()}
    suggested = suggested_names(space)
    if sorted(suggested) != sorted(start):
        extra, missing = set(suggested) - set(start), set(start) - set(suggested)
        raise TypeError(
            f"search space {space.__name__} does not fit strategy {strategy.name!r}: "
            f"it suggests {sorted(extra) or 'nothing'} that no one takes, and leaves "
            f"{sorted(missing) or 'nothing'} unsearched (or suggests a name twice)"
        )
    STRATEGIES[strategy.name] = entry = Registered(strategy, SearchSpace(space, start))
    return entry


def space_for(strategy: type[Strategy]) -> Callable[[SpaceFunction], SpaceFunction]:
    """Registers the decorated define-by-run function as ``strategy``'s search space."""

    def registering(space: SpaceFunction) -> SpaceFunction:
        register(strategy, space)
        return space

    return registering


def check_config(config: StudyConfig) -> StudyConfig:
    """``config`` validated against the registered strategies and their searched bounds."""
    from search_spaces.spaces import VALID_RANGES

    return config.validate(
        tuple(STRATEGIES), numeric_bounds(e.search for e in STRATEGIES.values()), VALID_RANGES
    )


def classes_of(names: list[str]) -> dict[str, type[Strategy]]:
    """``{name: class}`` of the named strategies: what a worker needs to build their trials."""
    return {name: STRATEGIES[name].strategy for name in names}


def spaces_of(names: list[str]) -> dict[str, SearchSpace]:
    """``{name: search space}`` of the named strategies: what the searcher needs."""
    return {name: STRATEGIES[name].search for name in names}

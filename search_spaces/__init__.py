"""One Optuna define-by-run search space per strategy (``search_spaces/spaces.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from search_spaces.spaces import SEARCH_SPACES


@dataclass(frozen=True)
class DefineByRun:
    """The space ``OptunaSearch`` calls for ``strategy`` (picklable, so Tune can checkpoint it).

    Besides the suggested hyperparameters, a trial's config carries its Optuna trial number,
    from which the trial's random seed is derived.
    """

    strategy: str

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        space, _ = SEARCH_SPACES[self.strategy]
        space(trial)
        return {"trial_number": trial.number}


def starting_point(strategy: str) -> dict[str, Any]:
    """The hand-picked configuration ``strategy``'s search evaluates first."""
    return dict(SEARCH_SPACES[strategy][1])


__all__ = ["SEARCH_SPACES", "DefineByRun", "starting_point"]

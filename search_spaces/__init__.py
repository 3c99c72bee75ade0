"""One Optuna define-by-run search space per strategy.

Each function takes an ``optuna.Trial``, calls ``suggest_*`` and returns nothing; the
ranges are those a practitioner would defend, checkable against DESIGN section 7 at a glance.
"""

from collections.abc import Callable
from dataclasses import dataclass

import optuna

from search_spaces.spaces import common, max_loss, noisy_label

#: Strategy name -> define-by-run function.
SEARCH_SPACES: dict[str, Callable[[optuna.Trial], None]] = {
    "noisy_label": noisy_label,
    "max_loss": max_loss,
}


@dataclass(frozen=True)
class DefineByRun:
    """The space ``OptunaSearch`` calls for ``strategy`` (picklable, so Tune can checkpoint it).

    Besides the suggested hyperparameters, a trial's config carries its Optuna trial number,
    from which the trial's random seed is derived.
    """

    strategy: str

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        SEARCH_SPACES[self.strategy](trial)
        return {"trial_number": trial.number}


__all__ = ["SEARCH_SPACES", "DefineByRun", "common"]

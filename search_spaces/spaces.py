"""Define-by-run search spaces: every strategy's = ``common`` + its own hyperparameters.

Each search also starts from one hand-picked configuration (its first trial), the way the
reference study hand-picked its settings: Adam at the customary 3e-4, no warm-up, equal
loss weights, BatchNorm statistics updating as in ordinary fine-tuning, and the strategy's
own knobs at their textbook values. Optuna then explores the whole space from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

SpaceFunction = Callable[[optuna.Trial], None]

#: Strategy name -> (define-by-run function, hand-picked starting configuration).
SEARCH_SPACES: dict[str, tuple[SpaceFunction, dict[str, Any]]] = {}

COMMON_START = {
    "lr": 3e-4,
    "optimizer": "adam",
    "weight_decay": 1e-5,
    "warmup_epochs": 0,
    "retain_weight": 1.0,
    "bn_mode": "train",
}


def search_space(strategy: str, start: dict[str, Any]) -> Callable[[SpaceFunction], SpaceFunction]:
    """Registers the decorated function as ``strategy``'s space, starting at ``start``."""

    def register(function: SpaceFunction) -> SpaceFunction:
        SEARCH_SPACES[strategy] = (function, {**COMMON_START, **start})
        return function

    return register


def common(trial: optuna.Trial) -> None:
    """Hyperparameters every strategy shares (DESIGN 7)."""
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_int("warmup_epochs", 0, 5)
    trial.suggest_float("retain_weight", 0.1, 10.0, log=True)
    trial.suggest_categorical("bn_mode", ["train", "frozen"])


@search_space("noisy_label", start={"noise_level": 1.0})
def noisy_label(trial: optuna.Trial) -> None:
    """Noisy Label: the fraction of forget voxels relabelled to another class."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


@search_space("max_loss", start={"forget_weight": 0.1, "loss_ceiling": 3.0})
def max_loss(trial: optuna.Trial) -> None:
    """Max Loss: weight of the ascended forget loss, and the ceiling that bounds it."""
    common(trial)
    trial.suggest_float("forget_weight", 0.01, 1.0, log=True)
    trial.suggest_float("loss_ceiling", 1.0, 10.0, log=True)


@search_space("random_encoder", start={"feature_weight": 1.0})
def random_encoder(trial: optuna.Trial) -> None:
    """Random Encoder: weight of the pull toward a random encoder's features."""
    common(trial)
    trial.suggest_float("feature_weight", 0.01, 10.0, log=True)


@search_space("learn_others", start={"target": "others"})
def learn_others(trial: optuna.Trial) -> None:
    """LearnOthers / LearnNoise: whose labels the forget subjects learn."""
    common(trial)
    trial.suggest_categorical("target", ["others", "noise"])


@search_space("fix_decoder", start={"noise_level": 1.0})
def fix_decoder(trial: optuna.Trial) -> None:
    """Fix Decoder: Noisy Label's noise level; the decoder stays frozen."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


@search_space("finetune", start={})
def finetune(trial: optuna.Trial) -> None:
    """Finetune on retain subjects only: the common hyperparameters alone."""
    common(trial)


@search_space("salun", start={"noise_level": 1.0, "mask_ratio": 0.5})
def salun(trial: optuna.Trial) -> None:
    """SalUn: Noisy Label's noise level and the fraction of most salient weights trained."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)
    trial.suggest_float("mask_ratio", 0.05, 0.9)

"""Define-by-run search spaces, one per strategy: ``common`` + the strategy's own hyperparameters.

``@space_for(Strategy)`` registers the function below it as that strategy's space; adding a
strategy is its file in ``trainables/`` and one such function here. A function suggests
exactly the hyperparameters its strategy and the epoch loop take (checked when it is
registered). Each search also starts from one hand-picked configuration (its first trial),
the way the reference study hand-picked its settings: the loop's defaults
(``trainables/settings.py``) and the strategy's fields at their defaults, their textbook
values. Optuna then explores the whole space from there.
"""

from __future__ import annotations

import math

import optuna

from search_spaces.registry import space_for
from trainables.finetune import Finetune
from trainables.fix_decoder import FixDecoder
from trainables.learn_others import LearnOthers
from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel
from trainables.random_encoder import RandomEncoder
from trainables.salun import SalUn
from trainables.settings import BN_MODES, OPTIMIZERS

#: Where each numeric hyperparameter means anything, ``[low, high]``: a study's
#: ``search_bounds`` must stay inside (a noise level of 1.08 is no fraction of voxels).
VALID_RANGES: dict[str, tuple[float, float]] = {
    "lr": (0.0, math.inf),
    "weight_decay": (0.0, math.inf),
    "warmup_epochs": (0.0, math.inf),
    "retain_weight": (0.0, math.inf),
    "noise_level": (0.0, 1.0),  # a fraction of the forget voxels
    "forget_weight": (0.0, math.inf),
    "loss_ceiling": (0.0, math.inf),
    "feature_weight": (0.0, math.inf),
    "mask_ratio": (0.0, 1.0),  # a fraction of the weights
}


def common(trial: optuna.Trial) -> None:
    """Hyperparameters every strategy shares (DESIGN 7): the loop's, and the retain loss's weight."""
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("optimizer", list(OPTIMIZERS))
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_int("warmup_epochs", 0, 5)
    trial.suggest_float("retain_weight", 0.1, 10.0, log=True)
    trial.suggest_categorical("bn_mode", list(BN_MODES))


@space_for(NoisyLabel)
def noisy_label(trial: optuna.Trial) -> None:
    """Noisy Label: the fraction of forget voxels relabelled to another class."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


@space_for(MaxLoss)
def max_loss(trial: optuna.Trial) -> None:
    """Max Loss: weight of the ascended forget loss, and the ceiling that bounds it."""
    common(trial)
    trial.suggest_float("forget_weight", 0.01, 1.0, log=True)
    trial.suggest_float("loss_ceiling", 1.0, 10.0, log=True)


@space_for(RandomEncoder)
def random_encoder(trial: optuna.Trial) -> None:
    """Random Encoder: weight of the pull toward a random encoder's features."""
    common(trial)
    trial.suggest_float("feature_weight", 0.01, 10.0, log=True)


@space_for(LearnOthers)
def learn_others(trial: optuna.Trial) -> None:
    """LearnOthers / LearnNoise: whose labels the forget subjects learn."""
    common(trial)
    trial.suggest_categorical("target", ["others", "noise"])


@space_for(FixDecoder)
def fix_decoder(trial: optuna.Trial) -> None:
    """Fix Decoder: Noisy Label's noise level; the decoder stays frozen."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


@space_for(Finetune)
def finetune(trial: optuna.Trial) -> None:
    """Finetune on retain subjects only: the common hyperparameters alone."""
    common(trial)


@space_for(SalUn)
def salun(trial: optuna.Trial) -> None:
    """SalUn: Noisy Label's noise level and the fraction of most salient weights trained."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)
    trial.suggest_float("mask_ratio", 0.05, 0.9)

"""Define-by-run search spaces: every strategy's = ``common`` + its own hyperparameters.

A function suggests exactly the hyperparameters its strategy takes (``trainables/registry.py``
checks this when the strategy is registered). Each search also starts from one hand-picked
configuration (its first trial), the way the reference study hand-picked its settings:
``COMMON_START`` for the loop (Adam at the customary 3e-4, no warm-up, BatchNorm statistics
updating as in ordinary fine-tuning) and the strategy's own fields at their defaults, their
textbook values. Optuna then explores the whole space from there.
"""

from __future__ import annotations

import optuna

from study.config import BN_MODES

#: The epoch loop's hyperparameters at the searches' hand-picked start.
COMMON_START = {"lr": 3e-4, "optimizer": "adam", "weight_decay": 1e-5, "warmup_epochs": 0, "bn_mode": "train"}


def common(trial: optuna.Trial) -> None:
    """Hyperparameters every strategy shares (DESIGN 7)."""
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_int("warmup_epochs", 0, 5)
    trial.suggest_float("retain_weight", 0.1, 10.0, log=True)
    trial.suggest_categorical("bn_mode", list(BN_MODES))


def noisy_label(trial: optuna.Trial) -> None:
    """Noisy Label: the fraction of forget voxels relabelled to another class."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


def max_loss(trial: optuna.Trial) -> None:
    """Max Loss: weight of the ascended forget loss, and the ceiling that bounds it."""
    common(trial)
    trial.suggest_float("forget_weight", 0.01, 1.0, log=True)
    trial.suggest_float("loss_ceiling", 1.0, 10.0, log=True)


def random_encoder(trial: optuna.Trial) -> None:
    """Random Encoder: weight of the pull toward a random encoder's features."""
    common(trial)
    trial.suggest_float("feature_weight", 0.01, 10.0, log=True)


def learn_others(trial: optuna.Trial) -> None:
    """LearnOthers / LearnNoise: whose labels the forget subjects learn."""
    common(trial)
    trial.suggest_categorical("target", ["others", "noise"])


def fix_decoder(trial: optuna.Trial) -> None:
    """Fix Decoder: Noisy Label's noise level; the decoder stays frozen."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


def finetune(trial: optuna.Trial) -> None:
    """Finetune on retain subjects only: the common hyperparameters alone."""
    common(trial)


def salun(trial: optuna.Trial) -> None:
    """SalUn: Noisy Label's noise level and the fraction of most salient weights trained."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)
    trial.suggest_float("mask_ratio", 0.05, 0.9)

"""Define-by-run search spaces: every strategy's = ``common`` + its own hyperparameters."""

from __future__ import annotations

import optuna


def common(trial: optuna.Trial) -> None:
    """Hyperparameters every strategy shares (DESIGN 7)."""
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_int("warmup_epochs", 0, 5)
    trial.suggest_float("retain_weight", 0.1, 10.0, log=True)
    trial.suggest_categorical("bn_mode", ["train", "frozen"])


def noisy_label(trial: optuna.Trial) -> None:
    """Noisy Label: the fraction of forget voxels relabelled to another class."""
    common(trial)
    trial.suggest_float("noise_level", 0.1, 1.0)


def max_loss(trial: optuna.Trial) -> None:
    """Max Loss: weight of the ascended forget loss, and the ceiling that bounds it."""
    common(trial)
    trial.suggest_float("forget_weight", 0.01, 1.0, log=True)
    trial.suggest_float("loss_ceiling", 1.0, 10.0, log=True)

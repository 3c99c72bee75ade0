"""Toy strategies, written the way every strategy is: its class and its search space.

``ToyBackground`` teaches the model that forget subjects are background everywhere. The
``toy_registered`` fixture registers it with ``search_spaces.register(ToyBackground,
toy_background)``: what ``@space_for`` does for each built-in strategy in
``search_spaces/spaces.py``. ``ToyNaN``'s loss is never finite, so each of its trials
diverges at epoch 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from search_spaces.spaces import common
from trainables.strategy import Batch, Strategy, segmentation_loss


@dataclass(kw_only=True, eq=False)
class ToyBackground(Strategy):
    name = "toy_background"

    forget_weight: float = 0.5

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.images)
        loss = self.retain_loss(logits, batch)
        if batch.forget.any():
            background = torch.zeros_like(batch.labels[batch.forget])
            loss = loss + self.forget_weight * segmentation_loss(logits[batch.forget], background)
        return loss


def toy_background(trial: optuna.Trial) -> None:
    """The common hyperparameters and the weight of the forget subjects' background loss."""
    common(trial)
    trial.suggest_float("forget_weight", 0.1, 1.0)


@dataclass(kw_only=True, eq=False)
class ToyNaN(Strategy):
    name = "toy_nan"

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.retain_loss(model(batch.images), batch) * math.nan


def toy_nan(trial: optuna.Trial) -> None:
    """The common hyperparameters alone."""
    common(trial)

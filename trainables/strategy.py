"""What an unlearning strategy is: a loss on a batch of retain and forget subjects.

A strategy file subclasses ``Strategy``, names itself, reads its hyperparameters in
``__init__`` and writes ``loss``; a few strategies also use the hooks ``prepare`` (once
before training), ``frozen_modules`` (what is not trained) and ``after_step``. The epoch
loop (``trainables/loop.py``) does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from study.data import Cohort


@dataclass
class Batch:
    """Subjects trained on in one step.

    ``images``: ``(B, 3, D, H, W)`` float; ``labels``: ``(B, D, H, W)`` int64 class indices;
    ``forget``: ``(B,)`` bool, which rows are forget subjects; ``generator``: the step's
    random source (seeded per trial and epoch, so resumed trials repeat their draws).
    """

    images: torch.Tensor
    labels: torch.Tensor
    forget: torch.Tensor
    generator: torch.Generator


_dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy of logits ``(B, C, D, H, W)`` against labels ``(B, D, H, W)``."""
    return _dice_ce(logits, labels[:, None])


class Strategy:
    """Base of every objective: supervised training on retain subjects only.

    ``params`` are the trial's hyperparameters; ``original_model`` is the model before
    unlearning (frozen; some strategies compare against it).
    """

    name = "supervised"
    #: Whether forget subjects are fed to ``loss`` at all.
    uses_forget = True

    def __init__(self, params: dict[str, Any], n_classes: int, original_model: nn.Module | None) -> None:
        self.params = params
        self.n_classes = n_classes
        self.original_model = original_model
        self.retain_weight = float(params.get("retain_weight", 1.0))

    def prepare(self, model: nn.Module, cohort: Cohort, device: torch.device) -> None:
        """Called once before the first epoch with the model to unlearn (default: nothing)."""

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules kept exactly as in the original model: no training, BatchNorm in eval mode."""
        return []

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (default: nothing)."""

    def retain_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``retain_weight`` x segmentation loss on the batch's retain rows (0 if none)."""
        keep = ~batch.forget
        if not keep.any():
            return logits.sum() * 0.0
        return self.retain_weight * segmentation_loss(logits[keep], batch.labels[keep])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar loss to minimise on ``batch``."""
        return self.retain_loss(model(batch.images), batch)

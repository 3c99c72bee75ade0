"""What an unlearning strategy is: a loss on a batch of retain and forget subjects.

A strategy file subclasses ``Strategy`` (a keyword-only dataclass), names itself, declares
its hyperparameters as fields whose defaults are their textbook values (the search's
hand-picked start) and writes ``loss``; a few strategies also use the hooks ``prepare``
(once before training), ``frozen_modules`` (what is not trained) and ``after_step``. The
epoch loop (``trainables/loop.py``) does the rest. A misspelt hyperparameter fails at
construction; ``search_spaces/spaces.py`` registers each strategy with its search space.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from study.cohort import IGNORE_LABEL, Cohort


@dataclass
class Batch:
    """Subjects trained on in one step.

    ``images``: ``(B, 3, D, H, W)`` float; ``labels``: ``(B, D, H, W)`` int64 class indices,
    ``IGNORE_LABEL`` on voxels that are not scored (MRBrainS18 labels 9 and 10);
    ``forget``: ``(B,)`` bool, which rows are forget subjects; ``generator``: the step's
    random source (seeded per trial and epoch, so resumed trials repeat their draws).
    """

    images: torch.Tensor
    labels: torch.Tensor
    forget: torch.Tensor
    generator: torch.Generator


# MONAI's DiceCELoss takes no ignore_index; its two terms do, so they are summed here.
_dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=IGNORE_LABEL)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(B, C, D, H, W)`` over the voxels of labels ``(B, D, H, W)``
    that are not ``IGNORE_LABEL`` (0, not NaN, when every voxel is ignored)."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (labels != IGNORE_LABEL).sum().clamp_min(1)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy of logits ``(B, C, D, H, W)`` against labels ``(B, D, H, W)``.

    Voxels labelled ``IGNORE_LABEL`` take no part in either term: the loss and its gradient
    do not depend on the logits there. Without them it equals MONAI's ``DiceCELoss``.
    """
    return _dice(logits, labels[:, None]) + cross_entropy(logits, labels)


@dataclass(kw_only=True, eq=False)
class Strategy:
    """Base of every objective: supervised training on retain subjects only.

    ``n_classes``, ``original_model`` (the model before unlearning, frozen; some strategies
    compare against it) and ``seed`` (the trial's, for draws made once at setup) are the
    trial's context; every other field is a hyperparameter.
    """

    name: ClassVar[str] = "supervised"
    #: Whether forget subjects are fed to ``loss`` at all.
    uses_forget: ClassVar[bool] = True

    n_classes: int
    original_model: nn.Module | None = None
    seed: int = 0
    retain_weight: float = 1.0

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """``{name: default}`` of the hyperparameters this strategy takes."""
        context = {"n_classes", "original_model", "seed"}
        return {f.name: f.default for f in fields(cls) if f.init and f.name not in context}

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


@dataclass(kw_only=True, eq=False)
class Supervised(Strategy):
    """True labels on every subject fed, forget subjects too when ``uses_forget``: how the
    models of the original recipe (the original model, the retrain reference) are trained."""

    uses_forget: bool = True  # type: ignore[misc]  # a field here, a class constant in strategies

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return segmentation_loss(model(batch.images), batch.labels)

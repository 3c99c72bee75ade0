"""Noisy Label: forget subjects are trained on corrupted labels, retain subjects on true ones.

A fraction ``noise_level`` of each forget subject's voxels is given a random *other* class,
redrawn every step; unscored voxels (``IGNORE_LABEL``) stay unscored. For ``C`` classes the
expected target keeps the true class most likely while ``noise_level < (C - 1) / C``; above
it, the model is taught to avoid the true class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from study.cohort import IGNORE_LABEL
from trainables.strategy import Batch, Strategy, segmentation_loss


def corrupt_labels(
    labels: torch.Tensor, noise_level: float, n_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Copy of ``labels`` (any shape, int64) with a ``noise_level`` fraction of voxels changed.

    Each chosen voxel gets a class drawn uniformly from the ``n_classes - 1`` other classes;
    a voxel labelled ``IGNORE_LABEL`` is never changed.
    """
    chosen = torch.rand(labels.shape, generator=generator) < noise_level
    shift = torch.randint(1, n_classes, labels.shape, generator=generator)
    chosen, shift = chosen.to(labels.device) & (labels != IGNORE_LABEL), shift.to(labels.device)
    return torch.where(chosen, (labels + shift) % n_classes, labels)


@dataclass(kw_only=True, eq=False)
class NoisyLabel(Strategy):
    name = "noisy_label"

    noise_level: float = 1.0

    def forget_targets(self, batch: Batch) -> torch.Tensor:
        """Labels ``(B, D, H, W)``: forget rows corrupted, retain rows untouched."""
        targets = batch.labels.clone()
        if batch.forget.any():
            targets[batch.forget] = corrupt_labels(
                batch.labels[batch.forget], self.noise_level, self.n_classes, batch.generator
            )
        return targets

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.images)
        loss = self.retain_loss(logits, batch)
        if batch.forget.any():
            targets = self.forget_targets(batch)
            loss = loss + segmentation_loss(logits[batch.forget], targets[batch.forget])
        return loss

"""Retain Label / Max Loss: gradient ascent on the forget subjects' loss, bounded.

Loss = ``retain_weight`` x segmentation loss on retain subjects
       - ``forget_weight`` x min(cross-entropy on forget subjects, ``loss_ceiling``),
the cross-entropy taken over scored voxels only (``IGNORE_LABEL`` voxels left out).
Past the ceiling the forget term is constant, so its gradient vanishes and ascent stops
instead of driving the logits to infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.strategy import Batch, Strategy, cross_entropy


@dataclass(kw_only=True, eq=False)
class MaxLoss(Strategy):
    name = "max_loss"

    forget_weight: float = 0.1
    loss_ceiling: float = 3.0

    def forget_term(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """min(mean cross-entropy, ``loss_ceiling``) of forget logits ``(B, C, D, H, W)`` against
        labels ``(B, D, H, W)``, over the voxels not labelled ``IGNORE_LABEL``."""
        return torch.clamp(cross_entropy(logits, labels), max=self.loss_ceiling)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.images)
        loss = self.retain_loss(logits, batch)
        if batch.forget.any():
            forget = self.forget_term(logits[batch.forget], batch.labels[batch.forget])
            loss = loss - self.forget_weight * forget
        return loss

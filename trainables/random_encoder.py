"""Random Encoder: on forget subjects, pull the encoder's features toward a random encoder's.

Loss = ``retain_weight`` x segmentation loss on retain subjects
       + ``feature_weight`` x mean squared distance between the encoder features of forget
       images and those of a frozen, randomly initialised encoder of the same architecture.
Retain rows share the forward pass: features once, then the decoder on them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from study.data import Cohort
from study.model import MedicalNetSegmentation
from trainables.strategy import Batch, Strategy


@dataclass(kw_only=True, eq=False)
class RandomEncoder(Strategy):
    name = "random_encoder"

    feature_weight: float = 1.0
    random_model: MedicalNetSegmentation | None = field(init=False, default=None)

    def prepare(self, model: nn.Module, cohort: Cohort, device: torch.device) -> None:
        """Builds the frozen random encoder: the same network, re-initialised from the trial's seed."""
        random_model = copy.deepcopy(model)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            for module in random_model.modules():
                if isinstance(module, nn.Conv3d | nn.ConvTranspose3d | nn.BatchNorm3d):
                    module.reset_parameters()  # BatchNorm: also its running statistics
        self.random_model = random_model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def random_features(self, images: torch.Tensor) -> torch.Tensor:
        """The random encoder's features ``(B, C, D/8, H/8, W/8)`` of ``images (B, 3, D, H, W)``."""
        return self.random_model.encode(images)

    def loss(self, model: MedicalNetSegmentation, batch: Batch) -> torch.Tensor:
        features = model.encode(batch.images)
        logits = model.decode(features, tuple(batch.images.shape[2:]))
        loss = self.retain_loss(logits, batch)
        if batch.forget.any():
            target = self.random_features(batch.images[batch.forget])
            loss = loss + self.feature_weight * F.mse_loss(features[batch.forget], target)
        return loss

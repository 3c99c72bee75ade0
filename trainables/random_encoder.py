"""Random Encoder: on forget subjects, pull the encoder's features toward a random encoder's.

Loss = ``retain_weight`` x segmentation loss on retain subjects
       + ``feature_weight`` x mean squared distance between the encoder features of forget
       images and those of a frozen, randomly initialised encoder of the same architecture.
The random encoder is initialised as the network initialises itself (Kaiming fan-out) and
its BatchNorm statistics are estimated on the retain subjects, so its features have the
scale of a network's that has seen the data (PyTorch's default initialisation with fresh
statistics gave features 10-30 times smaller: the loss mostly shrank features to zero).
Retain rows share the forward pass: features once, then the decoder on them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from study.cohort import Cohort
from study.model import MedicalNetSegmentation, recalibrate_batchnorm
from trainables.strategy import Batch, Strategy

#: Added to the trial's seed before drawing the random encoder.
SEED_OFFSET = 7_919_000


@dataclass(kw_only=True, eq=False)
class RandomEncoder(Strategy):
    name = "random_encoder"

    feature_weight: float = 1.0
    random_model: MedicalNetSegmentation | None = field(init=False, default=None)

    def prepare(self, model: MedicalNetSegmentation, cohort: Cohort, device: torch.device) -> None:
        """Builds the frozen random encoder: the same network, initialised as the network
        initialises itself (``MedicalNetSegmentation.initialise``) from the trial's seed, its
        BatchNorm statistics then estimated on the retain subjects.

        Fresh statistics (mean 0, variance 1) would make BatchNorm an identity in eval mode,
        and the features' scale would drift with the seed instead of being the network's.
        The weights are drawn on the CPU, leaving the caller's random stream untouched; the
        seed is offset by ``SEED_OFFSET`` so that the encoder is never the original model's
        own starting point (``model_from`` draws that from the study's seed, a small number).
        """
        random_model = copy.deepcopy(model).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED_OFFSET + self.seed)
            random_model.initialise()
        random_model.to(device)
        retain = [torch.tensor(cohort.images[s], device=device)[None] for s in cohort.split.retain]
        recalibrate_batchnorm(random_model, retain)
        self.random_model = random_model.eval().requires_grad_(False)

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

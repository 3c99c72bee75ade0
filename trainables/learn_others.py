"""LearnOthers / LearnNoise: forget subjects are trained toward labels that are not theirs.

``target = "others"``: a forget image is paired with the label map of a retain subject
drawn at random each step (LearnOthers). ``target = "noise"``: with a smooth random label
field, redrawn each step (LearnNoise): blobs of random classes, anatomically meaningless.
A borrowed label map keeps its own ``IGNORE_LABEL`` voxels (left out of the loss); a noise
field holds classes only, so every voxel of the forget image is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from study.cohort import Cohort
from trainables.strategy import Batch, Strategy, segmentation_loss


def smooth_label_field(
    shape: tuple[int, ...], n_classes: int, generator: torch.Generator, cell: int = 4
) -> torch.Tensor:
    """Random class map ``shape = (B, D, H, W)`` made of blobs about ``cell`` voxels across.

    Random class scores on a grid ``cell`` times coarser, upsampled trilinearly; each voxel
    takes the class of the highest score, so neighbours mostly share a class.
    """
    batch, *size = shape
    coarse = [max(2, s // cell) for s in size]
    scores = torch.randn(batch, n_classes, *coarse, generator=generator)
    return F.interpolate(scores, size=size, mode="trilinear", align_corners=False).argmax(dim=1)


@dataclass(kw_only=True, eq=False)
class LearnOthers(Strategy):
    name = "learn_others"

    target: str = "others"
    retain_labels: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.target not in ("others", "noise"):
            raise ValueError(f"learn_others target must be 'others' or 'noise', got {self.target!r}")

    def prepare(self, model: nn.Module, cohort: Cohort, device: torch.device) -> None:
        """Keeps the retain subjects' label maps ``(R, D, H, W)``, the pool of 'others'."""
        maps = [torch.tensor(cohort.labels[s], dtype=torch.long) for s in cohort.split.retain]
        self.retain_labels = torch.stack(maps).to(device)

    def forget_targets(self, batch: Batch) -> torch.Tensor:
        """Labels ``(F, D, H, W)`` the forget rows of ``batch`` are trained toward."""
        count = int(batch.forget.sum())
        shape = (count, *batch.labels.shape[1:])
        if self.target == "noise":
            return smooth_label_field(shape, self.n_classes, batch.generator).to(batch.labels.device)
        chosen = torch.randint(len(self.retain_labels), (count,), generator=batch.generator)
        return self.retain_labels[chosen.to(self.retain_labels.device)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch.images)
        loss = self.retain_loss(logits, batch)
        if batch.forget.any():
            loss = loss + segmentation_loss(logits[batch.forget], self.forget_targets(batch))
        return loss

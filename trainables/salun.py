"""SalUn (Fan et al., 2024): the Noisy Label objective on the most forget-salient weights only.

Saliency = |gradient of the forget subjects' segmentation loss| at the original model.
The ``mask_ratio`` fraction of weights with the largest saliency (one threshold over the
whole network) is trained; every other weight is restored to its original value after each
step, so neither gradients, momentum nor weight decay can move it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from study.cohort import Cohort
from trainables.noisy_label import NoisyLabel
from trainables.strategy import segmentation_loss


def saliency_masks(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask_ratio: float
) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of the top ``mask_ratio`` weights by |forget gradient|.

    ``images (F, 3, D, H, W)`` and ``labels (F, D, H, W)`` are the forget subjects; the
    gradient is taken in eval mode so BatchNorm statistics are not touched.
    """
    probe = copy.deepcopy(model).eval().requires_grad_(True)
    segmentation_loss(probe(images), labels).backward()
    saliency = {name: p.grad.abs() for name, p in probe.named_parameters()}
    flat = torch.cat([s.flatten() for s in saliency.values()])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    # Exactly the top-k by index: dead units give many zero-saliency ties at any threshold.
    chosen[torch.topk(flat, max(1, round(mask_ratio * flat.numel()))).indices] = True
    masks, start = {}, 0
    for name, s in saliency.items():
        masks[name] = chosen[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks


@dataclass(kw_only=True, eq=False)
class SalUn(NoisyLabel):
    name = "salun"

    mask_ratio: float = 0.5
    masks: dict[str, torch.Tensor] = field(init=False, default_factory=dict)
    original_weights: dict[str, torch.Tensor] = field(init=False, default_factory=dict)

    def prepare(self, model: nn.Module, cohort: Cohort, device: torch.device) -> None:
        forget = cohort.split.forget
        images = torch.stack([torch.tensor(cohort.images[s]) for s in forget]).to(device)
        labels = torch.stack([torch.tensor(cohort.labels[s], dtype=torch.long) for s in forget]).to(device)
        source = self.original_model if self.original_model is not None else model
        self.masks = saliency_masks(source.to(device), images, labels, self.mask_ratio)
        self.original_weights = {n: p.detach().clone() for n, p in source.named_parameters()}

    def after_step(self, model: nn.Module) -> None:
        """Puts every weight outside the mask back to its original value."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(torch.where(self.masks[name], param, self.original_weights[name]))

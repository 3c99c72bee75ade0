"""Dice, MAE, the unlearning objectives derived from them, and model evaluation on a cohort.

Per subject, on the softmax output at the input resolution, over the scored voxels (those
not labelled ``IGNORE_LABEL``, i.e. not MRBrainS18 infarction 9 or other 10):
  Dice = mean over foreground classes (MONAI ``DiceMetric``, background excluded); a
         prediction on an unscored voxel is neither a true nor a false positive;
  MAE  = mean over scored voxels and classes of ``|softmax - one_hot|``.
A subject set's figure is the mean over its subjects. With ``0`` the original model:
  ``dice_gap = retain_dice - forget_dice``, ``mae_gap = forget_mae - retain_mae``,
  ``forget_drop = (forget_dice0 - forget_dice) / forget_dice0``,
  ``retain_kept = retain_dice / retain_dice0``,
  ``score = w * forget_drop + (1 - w) * retain_kept``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric
from torch import nn

from study.data import IGNORE_LABEL, Cohort

SUBJECT_SETS = ("retain", "forget", "holdout")
SET_METRICS = tuple(f"{s}_{m}" for m in ("dice", "mae") for s in SUBJECT_SETS)
DERIVED_METRICS = ("dice_gap", "mae_gap", "forget_drop", "retain_kept", "score")
METRICS = SET_METRICS + DERIVED_METRICS
#: What the search maximises, both ratios of the original model's Dice.
OBJECTIVES = ("forget_drop", "retain_kept")


def scored_voxels(target: torch.Tensor) -> torch.Tensor:
    """Bool mask, the shape of ``target``: the voxels not labelled ``IGNORE_LABEL``."""
    return target != IGNORE_LABEL


def dice_per_subject(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Foreground-mean Dice ``(B,)`` of class maps ``pred``, ``target`` ``(B, D, H, W)``.

    A class absent from a subject's ground truth is left out of that subject's mean; voxels
    whose ``target`` is ``IGNORE_LABEL`` are left out of every class (MONAI's ``ignore_index``).
    """
    metric = DiceMetric(
        include_background=False,
        reduction="mean_channel",
        ignore_empty=True,
        num_classes=n_classes,
        ignore_index=IGNORE_LABEL,
    )
    metric(y_pred=pred.long()[:, None], y=target.long()[:, None])  # class indices (B, 1, D, H, W)
    return metric.aggregate()  # per-subject mean over the classes present (NaN ones left out)


def mae_per_subject(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MAE ``(B,)``: mean of ``|softmax - one_hot|`` over classes and scored voxels.

    ``probabilities``: ``(B, C, D, H, W)`` softmax output; ``target``: ``(B, D, H, W)``.
    NaN for a subject whose every voxel is ``IGNORE_LABEL``.
    """
    scored = scored_voxels(target)
    classes = torch.where(scored, target, torch.zeros_like(target)).long()
    onehot = F.one_hot(classes, probabilities.shape[1]).movedim(-1, 1).float()
    error = (probabilities - onehot).abs().sum(dim=1) * scored  # (B, D, H, W), 0 where ignored
    return error.flatten(1).sum(dim=1) / (scored.flatten(1).sum(dim=1) * probabilities.shape[1])


@torch.no_grad()
def evaluate_subjects(
    model: nn.Module, cohort: Cohort, subjects: tuple[str, ...], device: torch.device
) -> dict[str, tuple[float, float]]:
    """``{subject: (dice, mae)}`` of ``model`` in eval mode, one subject at a time."""
    was_training = model.training
    model.eval()
    figures = {}
    for subject in subjects:
        image = torch.tensor(cohort.images[subject], device=device)[
            None
        ]  # a copy: Ray's arrays are read-only
        target = torch.tensor(cohort.labels[subject], device=device)[None]
        probabilities = torch.softmax(model(image).float(), dim=1)
        dice = dice_per_subject(probabilities.argmax(dim=1), target, cohort.n_classes)
        mae = mae_per_subject(probabilities, target)
        figures[subject] = (float(dice[0]), float(mae[0]))
    model.train(was_training)
    return figures


def set_metrics(model: nn.Module, cohort: Cohort, device: torch.device) -> dict[str, float]:
    """``retain_dice``, ``forget_dice``, ``holdout_dice`` and the three MAEs; NaN for an empty set."""
    split = cohort.split
    per_subject = evaluate_subjects(model, cohort, split.training + split.holdout, device)
    metrics = {}
    for set_name in SUBJECT_SETS:
        subjects = getattr(split, set_name)
        for index, metric in enumerate(("dice", "mae")):
            values = [per_subject[s][index] for s in subjects]
            metrics[f"{set_name}_{metric}"] = sum(values) / len(values) if values else math.nan
    return metrics


def derived_metrics(
    metrics: dict[str, float], original: dict[str, float], score_weight: float = 0.5
) -> dict[str, float]:
    """Gaps and objectives of ``metrics`` relative to the original model's ``original``."""
    forget_drop = (original["forget_dice"] - metrics["forget_dice"]) / original["forget_dice"]
    retain_kept = metrics["retain_dice"] / original["retain_dice"]
    return {
        "dice_gap": metrics["retain_dice"] - metrics["forget_dice"],
        "mae_gap": metrics["forget_mae"] - metrics["retain_mae"],
        "forget_drop": forget_drop,
        "retain_kept": retain_kept,
        "score": score_weight * forget_drop + (1 - score_weight) * retain_kept,
    }

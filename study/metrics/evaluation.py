"""Dice, MAE, the unlearning objectives derived from them, and model evaluation on a cohort.

Per subject, on the softmax output at the input resolution (the search's fast figures;
MRBrainS18's own, per label on the native grid, are ``study/metrics/official.py``), over the
scored voxels (those not labelled ``IGNORE_LABEL``, i.e. not MRBrainS18 infarction 9 or
other 10), with the challenge's conventions:
  Dice = mean over foreground classes (MONAI ``DiceMetric``, background excluded) of each
         class's Dice: 0 for a class predicted but absent from the ground truth, undefined
         (left out of the mean) only when neither has it; a prediction on an unscored voxel
         is neither a true nor a false positive;
  MAE  = mean over scored voxels and over every class, background included, of
         ``|softmax - one_hot|`` (the mean absolute error of the probabilities; that of the
         hard label map is ``official.label_map_mae``).
A subject set's figure is the mean over its subjects (a subject with no foreground in
either, undefined, left out). With ``0`` the original model:
  ``dice_gap = retain_dice - forget_dice``, ``mae_gap = forget_mae - retain_mae``,
  ``forget_drop = (forget_dice0 - forget_dice) / forget_dice0``,
  ``retain_kept = retain_dice / retain_dice0``,
  ``score = w * forget_drop + (1 - w) * retain_kept``.
With ``r`` the retrain reference (trained without the forget subjects):
  ``forget_gap_to_retrain = |forget_dice - forget_dice_r|`` (and the same for MAE),
  ``retrain_match = 1 - forget_gap_to_retrain / forget_dice0`` (``study/config/objectives.py``).
Membership inference: ``study/metrics/privacy.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric
from torch import nn

from study.cohort import IGNORE_LABEL, Cohort, Split
from study.metrics.evidence import MEMBERSHIP_METRICS, Evidence, ForgetReference
from study.metrics.membership import membership_statistic
from study.metrics.privacy import PRIVACY_METRICS, SLAB, privacy_metrics, slab_features

SUBJECT_SETS = ("retain", "forget", "holdout")
SET_METRICS = tuple(f"{s}_{m}" for m in ("dice", "mae") for s in SUBJECT_SETS)
DERIVED_METRICS = (
    "dice_gap",
    "mae_gap",
    "forget_drop",
    "retain_kept",
    "score",
    "forget_gap_to_retrain",
    "forget_mae_gap_to_retrain",
    "retrain_match",
)
METRICS = SET_METRICS + DERIVED_METRICS + PRIVACY_METRICS + MEMBERSHIP_METRICS


def scored_voxels(target: torch.Tensor) -> torch.Tensor:
    """Bool mask, the shape of ``target``: the voxels not labelled ``IGNORE_LABEL``."""
    return target != IGNORE_LABEL


def dice_per_subject(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Foreground-mean Dice ``(B,)`` of class maps ``pred``, ``target`` ``(B, D, H, W)``.

    A class predicted but absent from the ground truth scores 0; one in neither is left out
    of the mean (NaN for a subject with no foreground class in either). Voxels whose
    ``target`` is ``IGNORE_LABEL`` are left out of every class (MONAI's ``ignore_index``).
    """
    metric = DiceMetric(
        include_background=False,
        reduction="none",
        ignore_empty=False,  # absent from the ground truth: 0 if predicted (1 if not: replaced below)
        num_classes=n_classes,
        ignore_index=IGNORE_LABEL,
    )
    per_class = metric(y_pred=pred.long()[:, None], y=target.long()[:, None])  # (B, n_classes - 1)
    scored = scored_voxels(target)
    in_either = torch.stack(
        [(((pred == c) | (target == c)) & scored).flatten(1).any(dim=1) for c in range(1, n_classes)], dim=1
    )
    return torch.where(in_either, per_class, torch.nan).nanmean(dim=1)


def slab_dice(prediction: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Foreground-mean Dice ``(S,)`` per slab of ``SLAB`` slices of class maps ``(D, H, W)``;
    NaN for a slab with no foreground class in either map."""
    starts = range(0, target.shape[0], SLAB)
    return torch.cat(
        [
            dice_per_subject(prediction[None, s : s + SLAB], target[None, s : s + SLAB], n_classes)
            for s in starts
        ]
    )


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


@dataclass(frozen=True)
class SubjectFigures:
    """One subject's figures: Dice, MAE, its slabs' membership-inference features ``(S, 4)``
    and the per-subject membership statistic (``study/metrics/membership.py``)."""

    dice: float
    mae: float
    slabs: np.ndarray
    statistic: float


@torch.no_grad()
def evaluate_subjects(
    model: nn.Module, cohort: Cohort, subjects: tuple[str, ...], device: torch.device
) -> dict[str, SubjectFigures]:
    """``{subject: SubjectFigures}`` of ``model`` in eval mode, one subject at a time."""
    was_training = model.training
    model.eval()
    figures = {}
    for subject in subjects:
        image = torch.tensor(cohort.images[subject], device=device)[None]  # a copy: Ray's are read-only
        target = torch.tensor(cohort.labels[subject], device=device)[None]
        probabilities = torch.softmax(model(image).float(), dim=1)
        prediction = probabilities.argmax(dim=1)
        dice = dice_per_subject(prediction, target, cohort.n_classes)
        mae = mae_per_subject(probabilities, target)
        scored = scored_voxels(target[0])
        slabs = slab_features(
            probabilities[0], target[0], slab_dice(prediction[0], target[0], cohort.n_classes), scored
        )
        statistic = membership_statistic(probabilities[0], target[0], scored)
        figures[subject] = SubjectFigures(float(dice[0]), float(mae[0]), slabs, statistic)
    model.train(was_training)
    return figures


def _set_means(figures: dict[str, SubjectFigures], split: Split) -> dict[str, float]:
    metrics = {}
    for set_name in SUBJECT_SETS:
        subjects = getattr(split, set_name)
        for metric in ("dice", "mae"):
            values = [v for s in subjects if not math.isnan(v := getattr(figures[s], metric))]
            metrics[f"{set_name}_{metric}"] = sum(values) / len(values) if values else math.nan
    return metrics


def set_metrics(model: nn.Module, cohort: Cohort, device: torch.device) -> dict[str, float]:
    """``retain_dice``, ``forget_dice``, ``holdout_dice`` and the three MAEs; NaN for an empty set."""
    split = cohort.split
    return _set_means(evaluate_subjects(model, cohort, split.training + split.holdout, device), split)


@dataclass(frozen=True)
class Reference:
    """What every trial is measured against: the original model's and the retrain reference's
    metrics, the retrain reference's slab losses ``(F,)`` on the forget subjects, and (with
    shadow models and retrain seeds) what the forget subjects are tested against."""

    original: dict[str, float]
    retrain: dict[str, float]
    retrain_forget_losses: tuple[float, ...]
    forget_reference: ForgetReference | None = None


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def derived_metrics(
    metrics: dict[str, float], reference: Reference, score_weight: float = 0.5
) -> dict[str, float]:
    """Gaps and objectives of set ``metrics`` relative to the original and retrain models."""
    original, retrain = reference.original, reference.retrain
    forget_drop = _ratio(original["forget_dice"] - metrics["forget_dice"], original["forget_dice"])
    retain_kept = _ratio(metrics["retain_dice"], original["retain_dice"])
    gap = abs(metrics["forget_dice"] - retrain["forget_dice"])
    return {
        "dice_gap": metrics["retain_dice"] - metrics["forget_dice"],
        "mae_gap": metrics["forget_mae"] - metrics["retain_mae"],
        "forget_drop": forget_drop,
        "retain_kept": retain_kept,
        "score": score_weight * forget_drop + (1 - score_weight) * retain_kept,
        "forget_gap_to_retrain": gap,
        "forget_mae_gap_to_retrain": abs(metrics["forget_mae"] - retrain["forget_mae"]),
        "retrain_match": 1 - _ratio(gap, original["forget_dice"]),
    }


def _all_metrics(
    figures: dict[str, SubjectFigures], split: Split, reference: Reference, score_weight: float
) -> dict[str, float]:
    metrics = _set_means(figures, split)
    slabs = {subject: f.slabs for subject, f in figures.items()}
    losses = np.asarray(reference.retrain_forget_losses)
    privacy = privacy_metrics(slabs, split.retain, split.forget, split.holdout, losses)
    membership = dict.fromkeys(MEMBERSHIP_METRICS, math.nan)
    if reference.forget_reference is not None:
        statistics = {s: figures[s].statistic for s in split.forget}
        dice = {s: figures[s].dice for s in split.forget}
        membership = reference.forget_reference.metrics(statistics, dice)
    return metrics | derived_metrics(metrics, reference, score_weight) | privacy | membership


def evaluate(
    model: nn.Module, cohort: Cohort, device: torch.device, reference: Reference, score_weight: float = 0.5
) -> dict[str, float]:
    """Every figure of ``METRICS`` for ``model``: set means, gaps and objectives, privacy."""
    split = cohort.split
    figures = evaluate_subjects(model, cohort, split.training + split.holdout, device)
    return _all_metrics(figures, split, reference, score_weight)


def measure_reference(
    models: dict[str, nn.Module],
    cohort: Cohort,
    device: torch.device,
    members: dict[str, frozenset[str]] | None = None,
    score_weight: float = 0.5,
    level: float = 0.05,
) -> tuple[Reference, Evidence]:
    """The ``Reference`` of a study and the membership ``Evidence`` of its reference models.

    ``models``: ``original``, ``retrain`` and any retrain seeds and shadow models (names as
    ``Evidence`` says); ``members``: whom each trained on (default, for the two alone: the
    split's training and retain subjects). The two models' metrics are
    complete (the original's objectives relative to itself, the retrain reference's gaps
    zero, its membership test against the other retrain seeds)."""
    split = cohort.split
    members = members or {"original": frozenset(split.training), "retrain": frozenset(split.retain)}
    figures = {
        name: evaluate_subjects(model, cohort, cohort.labelled, device) for name, model in models.items()
    }
    evidence = Evidence(
        statistics={name: {s: f.statistic for s, f in by.items()} for name, by in figures.items()},
        dice={name: {s: f.dice for s, f in by.items()} for name, by in figures.items()},
        members=members,
    )
    losses = tuple(float(x) for s in split.forget for x in figures["retrain"][s].slabs[:, 0])
    original, retrain = (_set_means(figures[k], split) for k in ("original", "retrain"))
    partial = Reference(original, retrain, losses)
    forget_reference = retrain_reference = None
    if evidence.sufficient()[0]:
        forget_reference = evidence.forget_reference(split.forget, level)
        retrain_reference = evidence.forget_reference(split.forget, level, without="retrain")
    reference = Reference(
        original=_all_metrics(
            figures["original"], split, replace(partial, forget_reference=forget_reference), score_weight
        ),
        retrain=_all_metrics(
            figures["retrain"], split, replace(partial, forget_reference=retrain_reference), score_weight
        ),
        retrain_forget_losses=losses,
        forget_reference=forget_reference,
    )
    return reference, evidence


@dataclass(frozen=True)
class Scoring:
    """How the epoch loop scores a model: its set figures alone (no ``reference``: a model of
    the original recipe being trained), or every figure of ``METRICS`` against ``reference``."""

    reference: Reference | None = None
    score_weight: float = 0.5

    def __call__(self, model: nn.Module, cohort: Cohort, device: torch.device) -> dict[str, float]:
        if self.reference is None:
            return set_metrics(model, cohort, device)
        return evaluate(model, cohort, device, self.reference, self.score_weight)

    def at_start(self) -> dict[str, float]:
        """The figures of the model an unlearning run starts from, the original model's
        (empty while the baselines themselves train)."""
        return {} if self.reference is None else dict(self.reference.original)

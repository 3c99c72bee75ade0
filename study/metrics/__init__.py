"""The figures: Dice and MAE per subject set, the unlearning objectives derived from them, and
membership inference, for any model on a cohort."""

from study.metrics.evaluation import (
    METRICS,
    Reference,
    Scoring,
    SubjectFigures,
    derived_metrics,
    dice_per_subject,
    evaluate,
    evaluate_subjects,
    mae_per_subject,
    measure_reference,
    set_metrics,
)
from study.metrics.privacy import PRIVACY_METRICS, SLAB, auc, privacy_metrics, slab_features

__all__ = [
    "METRICS",
    "PRIVACY_METRICS",
    "SLAB",
    "Reference",
    "Scoring",
    "SubjectFigures",
    "auc",
    "derived_metrics",
    "dice_per_subject",
    "evaluate",
    "evaluate_subjects",
    "mae_per_subject",
    "measure_reference",
    "privacy_metrics",
    "set_metrics",
    "slab_features",
]
